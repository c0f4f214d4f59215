//! One module per subcommand.

pub(crate) mod connect;
pub(crate) mod expose;
pub(crate) mod login;
pub(crate) mod ls;
pub(crate) mod manual;
pub(crate) mod relay;
pub(crate) mod token;

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed when this is called, not when the future is first polled, so a command that calls
/// it before it starts work cannot be killed outright by a signal that comes early.
pub(crate) fn stop_requested() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        async move {
            match handlers {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
