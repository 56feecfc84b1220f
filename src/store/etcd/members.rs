//! Which etcd members a mount talks to. etcd-client balances requests over every endpoint it
//! was given and keeps sending some to a member it cannot reach, so with one member of three
//! dead every few requests would fail. Here each member is probed (a `Status` call) every
//! second, and the client's balanced channel holds only the members that answered their last
//! probe: a dead member leaves it within about a second, a revived one comes back as soon as
//! it answers. With one endpoint there is nothing to choose and nothing runs.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

/// How often each member is probed, and how long one probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_WAIT: Duration = Duration::from_millis(800);

pub(super) struct Members {
    urls: Vec<String>,
    opts: ConnectOptions,
    /// A client of each member alone, for its probes (made again after a failed probe:
    /// with a user and password, connecting is itself a request).
    probes: Vec<Option<Client>>,
    /// Whether each member is in the shared client's channel.
    in_use: Vec<bool>,
}

impl Members {
    /// Probes every member once and connects a client to those that answered (to all, when
    /// none did: the first requests then say what is wrong, within the timeout).
    pub async fn connect(
        urls: Vec<String>,
        opts: ConnectOptions,
    ) -> Result<(Client, Option<Members>), etcd_client::Error> {
        if urls.len() < 2 {
            return Ok((Client::connect(urls, Some(opts)).await?, None));
        }
        let mut members = Members {
            probes: vec![None; urls.len()],
            in_use: Vec::new(),
            urls,
            opts,
        };
        for i in 0..members.urls.len() {
            let up = members.answers(i).await;
            members.in_use.push(up);
        }
        if !members.in_use.contains(&true) {
            members.in_use = vec![true; members.urls.len()];
        }
        let live = members.urls.iter().zip(&members.in_use).filter(|(_, &u)| u);
        let live: Vec<&String> = live.map(|(u, _)| u).collect();
        let client = Client::connect(live, Some(members.opts.clone())).await?;
        Ok((client, Some(members)))
    }

    /// Keeps `client`'s members to those that answer, for as long as the runtime lives.
    pub async fn follow(mut self, client: Client) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            for i in 0..self.urls.len() {
                let up = self.answers(i).await;
                if up == self.in_use[i] {
                    continue;
                }
                let url = &self.urls[i];
                let changed = match up {
                    true => client.add_endpoint(url).await,
                    false => client.remove_endpoint(url).await,
                };
                match changed {
                    Ok(()) => {
                        self.in_use[i] = up;
                        tracing::warn!(member = %url, answers = up, "etcd member changed state");
                    }
                    Err(e) => tracing::warn!(member = %url, error = %e, "updating etcd members"),
                }
            }
        }
    }

    /// Whether member `i` answers a status request in time.
    async fn answers(&mut self, i: usize) -> bool {
        let probe = async {
            if self.probes[i].is_none() {
                let c = Client::connect([&self.urls[i]], Some(self.opts.clone())).await?;
                self.probes[i] = Some(c);
            }
            match &mut self.probes[i] {
                Some(c) => c.status().await.map(drop),
                None => Ok(()),
            }
        };
        let up = tokio::time::timeout(PROBE_WAIT, probe)
            .await
            .is_ok_and(|r| r.is_ok());
        if !up {
            self.probes[i] = None;
        }
        up
    }
}
