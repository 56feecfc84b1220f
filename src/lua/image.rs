//! `image`: image functions for scripts, backed by the `image` crate (PNG and JPEG).
//! `image.load(bl)` decodes, `img:width()`, `img:height()`, `img:thumbnail("200x150")` fits
//! the image inside a box keeping its aspect ratio, `img:encode("png"|"jpeg"[, quality])`
//! gives a bufferlist, `image.format(bl)` names the format of encoded bytes (or nil).
//!
//! Decoding is bounded (dimensions and allocation) so a hostile file cannot exhaust memory,
//! and decoded pixels are charged to the call's memory budget like bufferlists.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, ImageReader};
use mlua::{Lua, UserData, UserDataMethods, Value};

use super::budget;
use super::bufferlist::{bytes_of, Bl};

/// The largest width or height decoded.
const MAX_SIDE: u32 = 16_384;

pub struct Img {
    img: DynamicImage,
}

impl Img {
    fn create(lua: &Lua, img: DynamicImage) -> mlua::Result<mlua::AnyUserData> {
        budget::charge(lua, img.as_bytes().len())?;
        lua.create_userdata(Img { img })
    }
}

impl Drop for Img {
    fn drop(&mut self) {
        budget::release(self.img.as_bytes().len());
    }
}

fn err(what: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("image: {what}"))
}

/// Parses a size spec: "200x150" (or "200X150").
pub fn parse_size(spec: &str) -> Option<(u32, u32)> {
    let (w, h) = spec.split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE).then_some((w, h))
}

fn decode(lua: &Lua, bytes: &[u8]) -> mlua::Result<mlua::AnyUserData> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(err)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(budget::budget_left(lua) as u64);
    reader.limits(limits);
    let img = reader.decode().map_err(err)?;
    Img::create(lua, img)
}

fn encode(img: &DynamicImage, format: &str, quality: Option<u8>) -> mlua::Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    match format {
        "png" => img.write_to(&mut out, ImageFormat::Png).map_err(err)?,
        "jpeg" | "jpg" => {
            // JPEG has no alpha channel.
            let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            let enc = JpegEncoder::new_with_quality(&mut out, quality.unwrap_or(85));
            rgb.write_with_encoder(enc).map_err(err)?
        }
        other => return Err(err(format!("cannot encode {other:?} (png or jpeg)"))),
    }
    Ok(out.into_inner())
}

impl UserData for Img {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("width", |_, this, ()| Ok(this.img.width()));
        methods.add_method("height", |_, this, ()| Ok(this.img.height()));
        methods.add_method("thumbnail", |lua, this, spec: String| {
            let (w, h) =
                parse_size(&spec).ok_or_else(|| err(format!("bad size {spec:?}, want WxH")))?;
            // A thumbnail never enlarges: the box is capped at the image's own size, which
            // also bounds what the resize allocates.
            let (w, h) = (w.min(this.img.width()), h.min(this.img.height()));
            budget::reserve(lua, w as usize * h as usize * 4)?;
            Img::create(lua, this.img.thumbnail(w, h))
        });
        methods.add_method(
            "encode",
            |lua, this, (format, quality): (String, Option<u8>)| {
                Bl::create(
                    lua,
                    encode(&this.img, &format.to_ascii_lowercase(), quality)?,
                )
            },
        );
    }
}

pub fn module(lua: &Lua) -> mlua::Result<mlua::Table> {
    let t = lua.create_table()?;
    t.set(
        "load",
        lua.create_function(|lua, v: Value| decode(lua, &bytes_of(&v)?))?,
    )?;
    t.set(
        "format",
        lua.create_function(|_, v: Value| {
            Ok(match image::guess_format(&bytes_of(&v)?) {
                Ok(ImageFormat::Png) => Some("png"),
                Ok(ImageFormat::Jpeg) => Some("jpeg"),
                _ => None,
            })
        })?,
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn size_specs_parse_and_refuse_nonsense() {
        assert_eq!(parse_size("200x150"), Some((200, 150)));
        assert_eq!(parse_size("64X64"), Some((64, 64)));
        assert_eq!(parse_size("0x10"), None);
        assert_eq!(parse_size("200"), None);
        assert_eq!(parse_size("99999x1"), None);
    }
}
