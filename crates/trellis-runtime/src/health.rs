//! Readiness of the sidecar and health of its app.
//!
//! Two facts decide `GET /v1.0/healthz`: the sidecar's own outbound side is up (components
//! loaded, API bound), and the app channel is ready (the app's port accepts connections, or
//! its health-check path answers). [`watch_app`] drives the second one in the background and,
//! when health checks are on, keeps probing so that invocations to an unhealthy app are
//! refused instead of hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{AppChannelConfig, AppHealthCheck};
use crate::invoke::AppChannel;

#[derive(Debug)]
pub struct Health {
    outbound_ready: AtomicBool,
    app_ready: AtomicBool,
    app_healthy: AtomicBool,
    changed: watch::Sender<()>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            outbound_ready: AtomicBool::new(false),
            app_ready: AtomicBool::new(false),
            // Until the first probe says otherwise the app gets the benefit of the doubt.
            app_healthy: AtomicBool::new(true),
            changed: watch::channel(()).0,
        }
    }
}

impl Health {
    pub fn outbound_ready(&self) -> bool {
        self.outbound_ready.load(Ordering::Acquire)
    }

    pub fn app_ready(&self) -> bool {
        self.app_ready.load(Ordering::Acquire)
    }

    pub fn app_healthy(&self) -> bool {
        self.app_healthy.load(Ordering::Acquire)
    }

    /// Ready for `GET /v1.0/healthz`.
    pub fn ready(&self) -> bool {
        self.outbound_ready() && self.app_ready()
    }

    pub fn set_outbound_ready(&self) {
        self.outbound_ready.store(true, Ordering::Release);
        self.changed.send_replace(());
    }

    pub fn set_app_ready(&self) {
        self.app_ready.store(true, Ordering::Release);
        self.changed.send_replace(());
    }

    fn set_app_healthy(&self, healthy: bool) {
        if self.app_healthy.swap(healthy, Ordering::AcqRel) != healthy {
            self.changed.send_replace(());
        }
    }

    /// Resolves once `GET /v1.0/healthz` would answer 204.
    pub async fn wait_ready(&self) {
        let mut rx = self.changed.subscribe();
        while !self.ready() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Waits for the app to come up, then (with health checks on) keeps probing it.
pub async fn watch_app(
    health: Arc<Health>,
    config: AppChannelConfig,
    channel: Arc<dyn AppChannel>,
) {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(5);
    let mut next_notice = Duration::from_secs(2);
    loop {
        let up = match &config.health_check {
            None => tokio::net::TcpStream::connect((config.host.as_str(), config.port))
                .await
                .is_ok(),
            Some(check) => channel.probe(check).await,
        };
        if up {
            break;
        }
        if started.elapsed() >= next_notice {
            tracing::info!(
                port = config.port,
                waited_secs = started.elapsed().as_secs(),
                "still waiting for the app to listen"
            );
            next_notice *= 2;
        }
        tokio::time::sleep(delay).await;
        // Start fast (apps often bind within milliseconds) but don't spin on slow starters.
        delay = (delay * 2).min(Duration::from_millis(250));
    }
    tracing::debug!(port = config.port, "app channel ready");
    health.set_app_ready();

    let Some(check) = config.health_check else {
        return;
    };
    probe_forever(&health, &check, channel.as_ref()).await;
}

async fn probe_forever(health: &Health, check: &AppHealthCheck, channel: &dyn AppChannel) {
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if channel.probe(check).await {
            if failures >= check.threshold {
                tracing::info!("app is healthy again");
            }
            failures = 0;
            health.set_app_healthy(true);
        } else {
            failures = failures.saturating_add(1);
            if failures == check.threshold {
                tracing::warn!(
                    path = check.path,
                    failures,
                    "app failed its health checks; invocations are refused until it recovers"
                );
                health.set_app_healthy(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_needs_both_sides() {
        let health = Health::default();
        assert!(!health.ready());
        health.set_outbound_ready();
        assert!(!health.ready());
        health.set_app_ready();
        assert!(health.ready());
        health.wait_ready().await;
    }

    #[test]
    fn healthy_flag_flips() {
        let health = Health::default();
        assert!(health.app_healthy());
        health.set_app_healthy(false);
        assert!(!health.app_healthy());
    }
}
