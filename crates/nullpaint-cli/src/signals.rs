//! The stop signals `batch` and `serve` obey: Ctrl-C (SIGINT) everywhere, SIGTERM on Unix (what
//! schedulers and supervisors send before killing a process). Each command decides what a first
//! and a second signal mean; this only says which one arrived.

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// Ctrl-C at the terminal.
    Interrupt,
    /// SIGTERM (Unix only).
    Terminate,
}

/// One registered signal listener. Registered once and kept, so a signal that arrives while
/// nobody awaits it (between two [`StopSignals::next`] calls) is delivered by the next one.
#[cfg(unix)]
type Listener = tokio::signal::unix::Signal;
#[cfg(windows)]
type Listener = tokio::signal::windows::CtrlC;

/// Listens for Ctrl-C and SIGTERM (inside a Tokio runtime) until it is dropped. Both listeners
/// are registered at [`StopSignals::new`] and kept between waits: a signal between two waits is
/// not lost. A signal that cannot be watched is said once (a warning) and ignored.
pub struct StopSignals {
    interrupt: Option<Listener>,
    #[cfg(unix)]
    terminate: Option<Listener>,
}

impl StopSignals {
    /// Starts listening. Must run inside a Tokio runtime with its I/O driver enabled.
    pub fn new() -> Self {
        #[cfg(unix)]
        let (interrupt, terminate) = {
            use tokio::signal::unix::{SignalKind, signal};
            (
                watch(signal(SignalKind::interrupt()), "Ctrl-C", "SIGTERM"),
                watch(signal(SignalKind::terminate()), "SIGTERM", "Ctrl-C"),
            )
        };
        #[cfg(windows)]
        let interrupt = watch(tokio::signal::windows::ctrl_c(), "Ctrl-C", "nothing");
        Self {
            interrupt,
            #[cfg(unix)]
            terminate,
        }
    }

    /// The next stop signal. Never returns when no signal can be watched.
    pub async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        let terminate = receive(self.terminate.as_mut());
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = receive(self.interrupt.as_mut()) => StopSignal::Interrupt,
            () = terminate => StopSignal::Terminate,
        }
    }
}

/// The listener, or a warning naming what still stops the process gracefully.
fn watch(listener: std::io::Result<Listener>, name: &str, other: &str) -> Option<Listener> {
    match listener {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!("cannot watch {name} ({e}): only {other} stops gracefully");
            None
        }
    }
}

/// Resolves when the signal arrives; never when there is no listener or it is gone (the runtime
/// shuts down: nothing more arrives).
async fn receive(listener: Option<&mut Listener>) {
    if let Some(listener) = listener
        && listener.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await
}
