//! Where a node joins: a multiaddr, or a coordinator's HTTP URL that lists its multiaddrs.

use std::str::FromStr;

use hearth_net::libp2p::Multiaddr;
use hearth_protocol::api::SwarmInfo;

use crate::limits::{JOIN_HTTP_TIMEOUT, JOIN_RESPONSE_BYTES_MAX};
use crate::{Error, Result};

/// A `--join` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinTarget {
    /// Dial this address directly.
    Addr(Multiaddr),
    /// Ask this coordinator's HTTP API (`GET /v1/swarm`) for its addresses.
    Http(String),
}

impl FromStr for JoinTarget {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadJoin {
            target: s.into(),
            reason,
        };
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = s.trim_end_matches('/').to_string();
            reqwest::Url::parse(&url).map_err(|e| bad(e.to_string()))?;
            Ok(Self::Http(url))
        } else if s.starts_with('/') {
            s.parse()
                .map(Self::Addr)
                .map_err(|e| bad(format!("not a multiaddr: {e}")))
        } else {
            Err(bad("expected a multiaddr such as /ip4/10.0.0.2/udp/7071/quic-v1, or the coordinator's http:// URL".into()))
        }
    }
}

/// The multiaddrs to dial for `target`. For a URL, asks the coordinator once; the caller retries.
pub async fn resolve(target: &JoinTarget) -> Result<Vec<Multiaddr>> {
    match target {
        JoinTarget::Addr(addr) => Ok(vec![addr.clone()]),
        JoinTarget::Http(base) => {
            let url = format!("{base}/v1/swarm");
            let fail = |reason: String| Error::JoinHttp {
                url: url.clone(),
                reason,
            };
            let mut builder = reqwest::Client::builder().timeout(JOIN_HTTP_TIMEOUT);
            // A coordinator with its own certificate: trust it as the CLI does.
            if let Some(path) = std::env::var_os("HEARTH_CA_CERT") {
                let pem = std::fs::read(&path).map_err(|e| fail(format!("HEARTH_CA_CERT: {e}")))?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| fail(format!("HEARTH_CA_CERT: {e}")))?;
                builder = builder.tls_certs_merge([cert]);
            }
            let client = builder.build().map_err(|e| fail(e.to_string()))?;
            let mut response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| {
                    fail(format!(
                        "{} (is `hearth coordinator` running there? this node keeps trying)",
                        root_cause(&e)
                    ))
                })?
                .error_for_status()
                .map_err(|e| fail(e.to_string()))?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
                if body.len() + chunk.len() > JOIN_RESPONSE_BYTES_MAX {
                    return Err(fail(format!("answer over {JOIN_RESPONSE_BYTES_MAX} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            let info: SwarmInfo = serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
            if info.protocol_version != hearth_protocol::PROTOCOL_VERSION {
                return Err(fail(format!(
                    "coordinator speaks protocol {}, this node {}",
                    info.protocol_version,
                    hearth_protocol::PROTOCOL_VERSION
                )));
            }
            let addrs: Vec<Multiaddr> = info.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if addrs.is_empty() {
                return Err(fail("the coordinator lists no usable address".into()));
            }
            Ok(addrs)
        }
    }
}

/// The innermost cause of `error` ("Connection refused (os error 111)"), which reqwest's own
/// message ("error sending request for url …") leaves out.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_refuses_the_rest() {
        assert!(matches!(
            "/ip4/127.0.0.1/tcp/7071".parse(),
            Ok(JoinTarget::Addr(_))
        ));
        assert_eq!(
            "http://127.0.0.1:7070/".parse::<JoinTarget>().ok(),
            Some(JoinTarget::Http("http://127.0.0.1:7070".into()))
        );
        for bad in ["127.0.0.1:7070", "/ip4/999.0.0.1/tcp/1", "http://", ""] {
            assert!(bad.parse::<JoinTarget>().is_err(), "{bad}");
        }
    }
}
