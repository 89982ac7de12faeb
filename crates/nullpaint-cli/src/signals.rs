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

/// Listens for Ctrl-C and SIGTERM (inside a Tokio runtime) until it is dropped. The SIGTERM
/// listener is kept between waits, so a SIGTERM between two of them is not lost; Ctrl-C is
/// awaited afresh by each [`StopSignals::next`], as before this type existed.
pub struct StopSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    /// Ctrl-C could not be watched: `next` waits for SIGTERM alone.
    interrupt_failed: bool,
}

impl StopSignals {
    /// Starts listening. Must run inside a Tokio runtime with its I/O driver enabled.
    pub fn new() -> Self {
        #[cfg(unix)]
        let terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM ({e}): only Ctrl-C stops gracefully");
                    None
                }
            };
        Self {
            #[cfg(unix)]
            terminate,
            interrupt_failed: false,
        }
    }

    /// The next stop signal. Never returns when neither signal can be watched.
    pub async fn next(&mut self) -> StopSignal {
        loop {
            let interrupt_failed = self.interrupt_failed;
            let interrupt = async move {
                if interrupt_failed {
                    std::future::pending::<()>().await;
                }
                tokio::signal::ctrl_c().await
            };
            #[cfg(unix)]
            let terminate = {
                let listener = self.terminate.as_mut();
                async move {
                    match listener {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                }
            };
            #[cfg(not(unix))]
            let terminate = std::future::pending::<Option<()>>();
            tokio::select! {
                result = interrupt => match result {
                    Ok(()) => return StopSignal::Interrupt,
                    Err(e) => {
                        tracing::warn!("cannot watch Ctrl-C ({e})");
                        self.interrupt_failed = true;
                    }
                },
                received = terminate => match received {
                    Some(()) => return StopSignal::Terminate,
                    // The listener is gone (the runtime shuts down): nothing more arrives.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }
}
