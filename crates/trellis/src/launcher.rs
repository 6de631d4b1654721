//! Starting sidecars and apps, and supervising them until they stop.
//!
//! Each app gets a sidecar in this process and a child process of its own, in its own
//! process group: a terminal's Ctrl-C reaches only `trellis`, which forwards the signal to
//! the whole group exactly once, keeps the sidecar serving while the app shuts down (apps
//! often make calls on the way out), then drains the sidecar. `trellis` exits with the app's
//! exit code, so a job run under it reports success or failure faithfully.

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;
use trellis_resources::Resources;
use trellis_runtime::{AppChannelConfig, Listeners, RunningSidecar, Sidecar, SidecarConfig};

use crate::args::{AppPlan, Plan};

/// What the supervisor asks of every app: `None` = keep running.
type StopSignal = Option<Signal>;

pub async fn run(plan: Plan) -> anyhow::Result<u8> {
    let mut started = Vec::new();
    for app in &plan.apps {
        match start(app).await {
            Ok(s) => started.push(s),
            Err(err) => {
                for s in started {
                    s.sidecar.stop().await;
                }
                return Err(err.context(format!("starting app {}", app.app_id)));
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel::<StopSignal>(None);
    let mut apps = JoinSet::new();
    for s in started {
        apps.spawn(supervise(s, stop_rx.clone(), plan.multi));
    }
    tokio::spawn(forward_signals(stop_tx.clone()));

    let mut exit_code = 0u8;
    while let Some(done) = apps.join_next().await {
        let code = done.unwrap_or(1);
        if exit_code == 0 {
            exit_code = code;
        }
        if !plan.multi {
            break;
        }
    }
    Ok(exit_code)
}

struct Started {
    plan: AppPlan,
    sidecar: RunningSidecar,
    child: Option<Child>,
}

async fn start(plan: &AppPlan) -> anyhow::Result<Started> {
    let resources = load_resources(plan)?;
    let configuration = match &plan.config {
        Some(path) => Some(
            trellis_resources::load_configuration_file(path)
                .map_err(|e| anyhow::anyhow!("invalid configuration file:\n{e}"))?,
        ),
        None => None,
    };
    // Only the local registry is confined to this machine; with any other resolver peers
    // come from elsewhere, so the internal port must be reachable from the network.
    let local_only = configuration
        .as_ref()
        .and_then(|c| c.spec.name_resolution.as_ref())
        .is_none_or(|nr| matches!(nr.component.as_str(), "" | "local" | "sqlite" | "mdns"));
    let internal_host = if local_only { "127.0.0.1" } else { "0.0.0.0" };

    let http = bind("127.0.0.1", plan.http_port, "--dapr-http-port").await?;
    let grpc = bind("127.0.0.1", plan.grpc_port, "--dapr-grpc-port").await?;
    let internal = bind(
        internal_host,
        plan.internal_port,
        "--dapr-internal-grpc-port",
    )
    .await?;
    let metrics = match plan.enable_metrics {
        true => Some(bind_metrics(plan.metrics_port).await?),
        false => None,
    };

    let mut config = SidecarConfig::new(plan.app_id.clone(), plan.data_dir.clone());
    config.namespace = plan.namespace.clone();
    config.app = plan.app_port.map(|port| AppChannelConfig {
        host: plan.app_channel_address.clone(),
        port,
        protocol: plan.app_protocol,
        health_check: plan.health_check.clone(),
    });
    config.max_request_body = plan.max_request_body;
    config.api_token = non_empty_env("DAPR_API_TOKEN");
    config.app_api_token = non_empty_env("APP_API_TOKEN");
    config.environment =
        trellis_runtime::Environment(std::sync::Arc::new(std::env::vars().collect()));
    config.enable_api_logging = plan.enable_api_logging;
    config.enable_metrics = plan.enable_metrics;
    config.resources = resources;
    config.configuration = configuration;
    config.graceful_shutdown = plan.graceful_shutdown;
    config.mtls = crate::mtls::config(plan, config.configuration.as_ref(), local_only)?;
    config.allowed_origins = plan.allowed_origins.clone();
    config
        .extended_metadata
        .insert("cliPID".into(), std::process::id().to_string());
    config.extended_metadata.insert(
        "daprRuntimeVersion".into(),
        trellis_runtime::RUNTIME_VERSION.into(),
    );
    if !plan.command.is_empty() {
        config
            .extended_metadata
            .insert("appCommand".into(), plan.command.join(" "));
    }

    let listeners = Listeners {
        http,
        internal,
        grpc: Some(grpc),
        metrics,
    };
    let sidecar = Sidecar::serve(config, listeners).await?;
    if let Some(addr) = sidecar.metrics_addr {
        // Where to scrape, for `GET /v1.0/metadata` (the port may have been picked).
        sidecar
            .runtime()
            .set_extended("metricsPort".into(), addr.port().to_string());
    }
    let child = if plan.command.is_empty() {
        None
    } else {
        match spawn_app(plan, &sidecar) {
            Ok(child) => {
                if let Some(pid) = child.id() {
                    sidecar
                        .runtime()
                        .set_extended("appPID".into(), pid.to_string());
                }
                Some(child)
            }
            Err(err) => {
                sidecar.stop().await;
                return Err(err);
            }
        }
    };
    let runtime = sidecar.runtime().clone();
    let (app_id, http_addr) = (plan.app_id.clone(), sidecar.http_addr);
    tokio::spawn(async move {
        runtime.health.wait_ready().await;
        tracing::info!(app_id, api = %format!("http://{http_addr}"), "app is up and running");
    });
    Ok(Started {
        plan: plan.clone(),
        sidecar,
        child,
    })
}

fn load_resources(plan: &AppPlan) -> anyhow::Result<Resources> {
    if plan.resources_paths.is_empty() {
        return Ok(Resources::default());
    }
    for path in &plan.resources_paths {
        if !path.exists() {
            bail!("resources path {} does not exist", path.display());
        }
    }
    let resources = trellis_resources::load_paths(&plan.resources_paths)
        .map_err(|e| anyhow::anyhow!("invalid resource files:\n{e}"))?;
    let resources = resources.for_app(&plan.app_id);
    let mut resources = match crate::args::namespace_is_set() {
        true => resources.in_namespace(&plan.namespace),
        false => resources,
    };
    // Relative file paths in component metadata mean the app's directory, as in Dapr.
    let base = match &plan.cwd {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("reading the working directory")?,
    };
    trellis_runtime::components::resolve_relative_paths(&mut resources, &base);
    Ok(resources)
}

async fn bind(host: &str, port: u16, flag: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind((host, port)).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {port} is already in use (another sidecar?); choose another with {flag}, or 0 for a free one"
        ),
        Err(e) => Err(e).with_context(|| format!("binding {host}:{port} for {flag}")),
    }
}

/// The port Dapr's sidecars serve metrics on when not told otherwise.
const DEFAULT_METRICS_PORT: u16 = 9090;

/// The metrics listener: the port asked for, exactly; unset, 9090 when it is free, else a
/// free port (several sidecars on one machine each want 9090; only the first gets it, and
/// the others must not fail for that). The port is in the startup log, in
/// `DAPR_METRICS_PORT` and in the metadata API's `extended.metricsPort`.
async fn bind_metrics(port: Option<u16>) -> anyhow::Result<TcpListener> {
    if let Some(port) = port {
        return bind("127.0.0.1", port, "--metrics-port").await;
    }
    match TcpListener::bind(("127.0.0.1", DEFAULT_METRICS_PORT)).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = bind("127.0.0.1", 0, "--metrics-port").await?;
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(
                    port = addr.port(),
                    "port {DEFAULT_METRICS_PORT} is taken (another sidecar?); serving metrics on a free port"
                );
            }
            Ok(listener)
        }
        Err(e) => Err(e).context("binding 127.0.0.1:9090 for metrics"),
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn spawn_app(plan: &AppPlan, sidecar: &RunningSidecar) -> anyhow::Result<Child> {
    let program = &plan.command[0];
    let http_port = sidecar.http_addr.port().to_string();
    // The ports actually bound (a 0 in the plan means "pick one"), so SDKs dial the right one.
    let grpc_port = sidecar
        .grpc_addr
        .map_or(plan.grpc_port, |a| a.port())
        .to_string();
    let mut cmd = Command::new(program);
    cmd.args(&plan.command[1..])
        .env("APP_ID", &plan.app_id)
        .env("TRELLIS_APP_ID", &plan.app_id)
        .env("DAPR_HTTP_PORT", &http_port)
        .env("TRELLIS_HTTP_PORT", &http_port)
        .env("DAPR_GRPC_PORT", &grpc_port)
        .env(
            "DAPR_GRPC_ENDPOINT",
            format!("http://127.0.0.1:{grpc_port}"),
        )
        .env("TRELLIS_GRPC_PORT", &grpc_port)
        .env(
            "DAPR_METRICS_PORT",
            sidecar
                .metrics_addr
                .map_or(plan.metrics_port.unwrap_or(DEFAULT_METRICS_PORT), |a| {
                    a.port()
                })
                .to_string(),
        )
        .env("APP_PROTOCOL", plan.app_protocol.as_str())
        .env("APP_CHANNEL_ADDRESS", &plan.app_channel_address)
        .envs(&plan.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: signals reach the app (and its children) once, from us.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(port) = plan.app_port {
        cmd.env("APP_PORT", port.to_string())
            .env("TRELLIS_APP_PORT", port.to_string());
    }
    if let Some(dir) = &plan.cwd {
        cmd.current_dir(dir);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().with_context(|| {
        format!("cannot start the app command {program:?}; is it installed and on PATH?")
    })?;
    let prefix = format!("== APP - {} == ", plan.app_id);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, prefix.clone(), false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, prefix, true));
    }
    Ok(child)
}

/// Makes the app die with `trellis`, even when `trellis` cannot say so (SIGKILL, OOM
/// killer): Linux sends the app SIGKILL when its parent dies (`PR_SET_PDEATHSIG`). Its
/// sidecar is gone then, so there is nothing left for the app to do gracefully.
///
/// The signal fires when the *thread* that forked the child exits, not the process. Apps are
/// spawned only from `launcher::run`, the future `main` blocks on, so that thread is the
/// main thread, on the current-thread runtime and the multi-thread one alike (never a tokio
/// worker that might be retired); the assertion below keeps it so.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    debug_assert_eq!(
        std::thread::current().name(),
        Some("main"),
        "apps must be spawned from the main thread, or PR_SET_PDEATHSIG fires early"
    );
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed: it makes two system calls (prctl, getppid)
    // through nix's thin wrappers, allocates nothing, takes no lock and touches no state
    // shared with the parent's other threads. Returning an error there makes `spawn` fail.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL))?;
            // The parent may have died between fork and prctl; then no signal will come.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "trellis exited while starting the app",
                ));
            }
            Ok(())
        });
    }
}

/// Copies the app's output line by line, prefixed with its app id. Bytes are passed through
/// untouched (an app may print anything, valid UTF-8 or not).
async fn pump(stream: impl AsyncRead + Unpin, prefix: String, to_stderr: bool) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                // One write per line under the lock keeps lines of different apps whole.
                let _ = if to_stderr {
                    let mut e = std::io::stderr().lock();
                    e.write_all(prefix.as_bytes())
                        .and_then(|()| e.write_all(&line))
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(prefix.as_bytes())
                        .and_then(|()| o.write_all(&line))
                        .and_then(|()| o.flush())
                };
            }
        }
    }
}

/// Runs one app to the end; returns its exit code (0 for a sidecar without an app).
async fn supervise(started: Started, mut stop: watch::Receiver<StopSignal>, multi: bool) -> u8 {
    let Started {
        plan,
        sidecar,
        child,
    } = started;
    let code = match child {
        None => {
            tokio::select! {
                () = sidecar.shutdown_requested() => {}
                _ = stop.wait_for(Option::is_some) => {}
            }
            0
        }
        Some(mut child) => {
            let pgid = child.id().map(|id| Pid::from_raw(id as i32));
            enum Event {
                Exited(Option<ExitStatus>),
                ApiShutdown,
                Signal(Signal),
            }
            let event = tokio::select! {
                status = child.wait() => Event::Exited(status.ok()),
                () = sidecar.shutdown_requested() => Event::ApiShutdown,
                signal = stop.wait_for(Option::is_some) => {
                    Event::Signal(signal.ok().and_then(|s| *s).unwrap_or(Signal::SIGTERM))
                }
            };
            let (status, asked) = match event {
                Event::Exited(status) => (status, None),
                Event::ApiShutdown => {
                    tracing::info!(
                        app_id = plan.app_id,
                        "stopping the app: shutdown requested through the API"
                    );
                    let status = terminate(
                        &mut child,
                        pgid,
                        Signal::SIGTERM,
                        plan.graceful_shutdown,
                        &mut stop,
                    )
                    .await;
                    (status, Some(Signal::SIGTERM))
                }
                Event::Signal(signal) => {
                    let status =
                        terminate(&mut child, pgid, signal, plan.graceful_shutdown, &mut stop)
                            .await;
                    (status, Some(signal))
                }
            };
            // The app is gone; whatever it left running in its group goes with it.
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGTERM);
            }
            let code = status.map(exit_code).unwrap_or(1);
            let stopped_by_us = asked.is_some_and(|sig| {
                status.and_then(|s| s.signal()) == Some(sig as i32) || code == 0
            });
            if multi || code != 0 {
                // Which app ended how: on the signal passed on to it (and its exit code or
                // the signal that ended it), on its own, or with an error.
                match (asked, code) {
                    (Some(signal), code) if stopped_by_us => {
                        let how = match status.and_then(|s| s.signal()) {
                            Some(n) => {
                                Signal::try_from(n).map_or(format!("signal {n}"), |s| s.to_string())
                            }
                            None => format!("exit code {code}"),
                        };
                        tracing::info!(app_id = plan.app_id, %signal, ended_by = how, "app stopped");
                    }
                    (_, 0) => tracing::info!(app_id = plan.app_id, "app exited successfully"),
                    (_, code) => {
                        tracing::warn!(app_id = plan.app_id, code, "app exited with an error");
                    }
                }
            }
            // In a run file, an app that ended because Ctrl-C asked it to did what it was
            // told: the run as a whole succeeded. Alone, trellis mirrors its app's code.
            if multi && stopped_by_us { 0 } else { code }
        }
    };
    sidecar.stop().await;
    code
}

/// Sends `signal` to the app's process group and waits for it to exit; after the grace
/// period (or a second Ctrl-C) it is killed.
async fn terminate(
    child: &mut Child,
    pgid: Option<Pid>,
    signal: Signal,
    grace: Duration,
    stop: &mut watch::Receiver<StopSignal>,
) -> Option<ExitStatus> {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, signal);
    }
    stop.mark_unchanged();
    let forced = async {
        tokio::select! {
            () = tokio::time::sleep(grace + Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s == Some(Signal::SIGKILL)) => {}
        }
    };
    tokio::select! {
        status = child.wait() => return status.ok(),
        () = forced => {}
    }
    tracing::warn!("the app did not exit in time; killing it");
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    child.wait().await.ok()
}

fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        _ => 1,
    }
}

/// SIGINT/SIGTERM ask every app to stop; a second one while stopping kills them.
async fn forward_signals(stop: watch::Sender<StopSignal>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals; Ctrl-C will not stop apps gracefully");
        return;
    };
    loop {
        let received = tokio::select! {
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
        };
        if stop.borrow().is_some() {
            tracing::warn!("second signal: killing the apps");
            stop.send_replace(Some(Signal::SIGKILL));
        } else {
            tracing::info!(signal = %received, "stopping the apps");
            stop.send_replace(Some(received));
        }
    }
}
