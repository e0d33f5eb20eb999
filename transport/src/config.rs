//! Transport settings and their translation to quinn, tuned for long fat pipes.
//!
//! The windows follow from the bandwidth-delay product (BDP) of the path the link is expected to
//! run on: with the defaults, 1 Gbit/s × 150 ms RTT = 125 MB/s × 0.15 s = **18.75 MB** in
//! flight. A sender can only keep the pipe full if the receiver advertises at least that much
//! credit, so:
//!
//! - per-stream receive window = 1 × BDP (one large message alone can fill the pipe),
//! - connection receive window = 2 × BDP (37.5 MB: the pipe stays full while the application
//!   drains what arrived in the previous RTT),
//! - send window = 2 × BDP,
//! - UDP socket buffers = 8 MiB requested (the kernel caps them at `net.core.rmem_max` /
//!   `wmem_max`; raise those on real hosts).
//!
//! quinn's defaults (1.25 MB per stream, sized for 100 ms × 100 Mbit/s) would cap one stream at
//! 1.25 MB / 0.15 s ≈ 8.3 MB/s on a 150 ms path, whatever the bandwidth. See docs/transport.md.

use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;

use crate::backoff::Backoff;
use crate::frame::{DEFAULT_MAX_PAYLOAD, HEADER_LEN};

/// Congestion controller of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Congestion {
    /// CUBIC (RFC 9438): loss-based, quinn's own default and its most exercised controller.
    /// Every loss shrinks the window, so random loss caps throughput near
    /// `MSS / RTT × 1.22 / √loss` (≈ 200 KB/s at 50 ms and 2 %).
    Cubic,
    /// BBR (quinn's implementation, marked experimental there): paces at the measured
    /// bottleneck rate and does not treat a lost packet as congestion, so it keeps a lossy long
    /// fat pipe full. Default: measured 9× faster than CUBIC at 50 ms RTT and 2 % loss through
    /// the relay (docs/transport.md).
    #[default]
    Bbr,
}

/// Tunables of an endpoint. Every default is written next to its field.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSettings {
    /// RTT the windows are sized for. Default: 150 ms.
    pub design_rtt: Duration,
    /// Bandwidth the windows are sized for, in bytes per second. Default: 125 000 000 (1 Gbit/s).
    pub design_bandwidth: u64,
    /// Largest message payload accepted. Default: 16 MiB ([`DEFAULT_MAX_PAYLOAD`]).
    pub max_payload: u32,
    /// Requests one peer may have in flight on a connection. Default: 1024.
    pub max_concurrent_requests: u32,
    /// Keep-alive PING interval on an idle connection. Default: 5 s.
    pub keep_alive: Duration,
    /// A connection with nothing heard for this long is dead. Default: 30 s.
    pub idle_timeout: Duration,
    /// Longest wait for one request's response. Default: 30 s.
    pub request_timeout: Duration,
    /// Longest wait for a handshake and hello. Default: 10 s.
    pub connect_timeout: Duration,
    /// Reconnect schedule. Default: [`Backoff::default`] (100 ms doubling to 10 s, 50 % jitter).
    pub backoff: Backoff,
    /// How long shutdown waits for in-flight requests. Default: 10 s.
    pub drain_timeout: Duration,
    /// Requested UDP socket send and receive buffer size. Default: 8 MiB.
    pub socket_buffer: usize,
    /// Congestion controller. Default: [`Congestion::Bbr`].
    pub congestion: Congestion,
    /// Request payload bytes that all connections to this endpoint may hold at once. A
    /// request waits for its share before its payload is read, so flow control holds its
    /// sender back instead of the node buffering without bound; one payload of
    /// `max_payload` always fits. Default: 256 MiB.
    pub inbound_budget: u64,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            design_rtt: Duration::from_millis(150),
            design_bandwidth: 125_000_000,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_concurrent_requests: 1024,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            drain_timeout: Duration::from_secs(10),
            socket_buffer: 8 << 20,
            congestion: Congestion::Bbr,
            inbound_budget: 256 << 20,
        }
    }
}

/// The windows derived from the design bandwidth and RTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Bandwidth-delay product in bytes.
    pub bdp: u64,
    /// Per-stream receive window.
    pub stream_receive: u64,
    /// Connection receive window.
    pub connection_receive: u64,
    /// Send window.
    pub send: u64,
}

impl TransportSettings {
    /// Windows sized from the BDP; the stream window is at least one maximal message.
    pub fn windows(&self) -> Windows {
        let bdp = (u128::from(self.design_bandwidth) * self.design_rtt.as_micros() / 1_000_000)
            .try_into()
            .unwrap_or(u64::MAX);
        let one_message = u64::from(self.max_payload) + HEADER_LEN as u64;
        let cap = (1u64 << 62) - 1; // largest QUIC varint
        Windows {
            bdp,
            stream_receive: bdp.max(one_message).min(cap),
            connection_receive: bdp.saturating_mul(2).max(one_message).min(cap),
            send: bdp.saturating_mul(2).max(one_message),
        }
    }

    /// The quinn transport configuration these settings describe.
    pub(crate) fn quinn(&self) -> Arc<quinn::TransportConfig> {
        let windows = self.windows();
        let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(varint(windows.stream_receive))
            .receive_window(varint(windows.connection_receive))
            .send_window(windows.send)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_requests))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            .initial_rtt(self.design_rtt.min(Duration::from_millis(333)))
            .datagram_receive_buffer_size(None);
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
        };
        Arc::new(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_windows_follow_the_bdp_of_1_gbit_at_150_ms() {
        let w = TransportSettings::default().windows();
        assert_eq!(w.bdp, 18_750_000);
        assert_eq!(w.stream_receive, 18_750_000);
        assert_eq!(w.connection_receive, 37_500_000);
        assert_eq!(w.send, 37_500_000);
    }

    #[test]
    fn the_stream_window_holds_one_maximal_message() {
        let s = TransportSettings {
            design_bandwidth: 1_000_000,
            design_rtt: Duration::from_millis(10),
            ..TransportSettings::default()
        };
        let w = s.windows();
        assert_eq!(w.bdp, 10_000);
        assert_eq!(w.stream_receive, u64::from(DEFAULT_MAX_PAYLOAD) + 6);
    }
}
