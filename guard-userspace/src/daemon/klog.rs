//! The program's aya-log records (only with `kernel_debug_log = true`), forwarded to `tracing`.

use tracing::info;

/// Forwards the program's aya-log records to `tracing`, at info level: they are only produced
/// when the operator turned `kernel_debug_log` on, so they should show at the default level.
pub(super) struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        info!(target: "sipguard::kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

pub(super) async fn forward(logger: aya_log::EbpfLogger<KernelLog>) {
    // SAFETY: the logger owns its ring-buffer fd and is moved into the AsyncFd, so the fd stays
    // open and is not used elsewhere while it is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
