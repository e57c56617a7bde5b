//! `health`: whether the gateway listening where this configuration says answers `/healthz`.
//! What a container's `HEALTHCHECK` runs: the runtime image has no shell and no HTTP client but
//! the gateway itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::Config;

/// How long the gateway has to answer: a live one answers `/healthz` at once.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the gateway is not taken for healthy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HealthError {
    /// No answer (nothing listens, or it did not answer in time).
    #[error("no answer from {url}: {source}")]
    NoAnswer {
        /// What was asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than 200.
    #[error("{url} answered {status}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
}

/// Where a gateway bound to `bind` is reached from the same machine: the loopback address
/// when it listens on every address.
fn local_address(bind: IpAddr) -> IpAddr {
    match bind {
        IpAddr::V4(address) if address.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(address) if address.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Asks `GET /healthz` of the gateway `config` listens as.
pub(crate) async fn check(config: &Config) -> Result<(), HealthError> {
    let address = SocketAddr::new(local_address(config.bind), config.port);
    let url = format!("http://{address}/healthz");
    let no_answer = |source| HealthError::NoAnswer {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(no_answer)?;
    let response = client.get(&url).send().await.map_err(no_answer)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(HealthError::Status {
            url,
            status: response.status(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_on_every_address_is_asked_on_the_loopback() {
        let local = |bind: &str| local_address(bind.parse().unwrap()).to_string();
        assert_eq!(local("0.0.0.0"), "127.0.0.1");
        assert_eq!(local("::"), "::1");
        assert_eq!(local("10.0.0.7"), "10.0.0.7");
    }
}
