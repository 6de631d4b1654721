//! Test helpers shared by every crate's integration tests: start `trellis` processes and
//! apps on loopback ports, and talk HTTP to them.
//!
//! Everything here uses real sockets and real processes; each helper picks its own free
//! ports and temporary directories so tests run in parallel and twice in a row. [`SubscriberApp`]
//! plays a pub/sub subscriber.

pub mod app;
pub mod child;
pub mod exposition;
pub mod http;
pub mod otlp;
pub mod process;
pub mod servers;
pub mod subscriber;
pub mod tls;

pub use app::TestApp;
pub use child::{child_mode, respawn_test};
pub use http::{Downloaded, HttpResponse, download, request, send_chunked, try_request};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use process::{Sidecar, SidecarBuilder, free_port, wait_for_status, wait_until};
pub use subscriber::{Received, SubscriberApp};
pub use tls::TestCa;

/// A standard-library Python HTTP app for launcher tests: `GET /` says hello with its env,
/// `/exit/<code>` makes the process exit, every request is echoed as JSON.
pub const PYTHON_ECHO_APP: &str = include_str!("echo_app.py");
