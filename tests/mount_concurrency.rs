//! Several threads creating, writing and renaming in one directory: no lost entries and no
//! torn data.

mod common;

use std::fs;
use std::sync::Arc;
use std::thread;

use common::TestFs;

#[test]
fn concurrent_create_write_rename_in_one_directory() {
    let t = TestFs::mount();
    let dir = Arc::new(t.bucket("b").join("shared"));
    fs::create_dir(&*dir).unwrap();
    let threads: Vec<_> = (0..6)
        .map(|id| {
            let dir = dir.clone();
            thread::spawn(move || {
                for i in 0..150 {
                    // Each file holds a pattern that tells who wrote it: torn writes show.
                    let body: Vec<u8> = format!("{id}:{i};")
                        .bytes()
                        .cycle()
                        .take(70_000 + i * 13)
                        .collect();
                    let tmp = dir.join(format!(".tmp-{id}-{i}"));
                    fs::write(&tmp, &body).unwrap();
                    fs::rename(&tmp, dir.join(format!("f-{id}-{i}"))).unwrap();
                    if i % 10 == 0 {
                        // Everyone also replaces one shared name.
                        let mine = dir.join(format!(".shared-{id}-{i}"));
                        fs::write(&mine, &body).unwrap();
                        fs::rename(&mine, dir.join("shared")).unwrap();
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6 * 150 + 1, "entries lost or leaked");
    assert!(names.iter().all(|n| !n.starts_with('.')));
    for id in 0..6 {
        for i in 0..150 {
            let body = fs::read(dir.join(format!("f-{id}-{i}"))).unwrap();
            let want: Vec<u8> = format!("{id}:{i};")
                .bytes()
                .cycle()
                .take(70_000 + i * 13)
                .collect();
            assert_eq!(body, want, "f-{id}-{i} is torn");
        }
    }
    let shared = fs::read_to_string(dir.join("shared")).unwrap();
    let head = shared.split(';').next().unwrap().to_string();
    assert!(shared
        .split(';')
        .filter(|s| !s.is_empty())
        .all(|s| s == head || head.starts_with(s)));
}
