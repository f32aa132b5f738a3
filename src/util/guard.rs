//! libtorch reports some failures (an allocation that does not fit, say) by a panic inside
//! tch's infallible calls, others as errors. Work on user-sized tensors runs inside
//! [`catch_torch_panic`], which turns either into one line with the work's name; the panic
//! message is not printed.
use crate::error::{Result, TlError};
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Run `f`; a panic or an error inside it becomes `TlError::Torch { context: what, .. }`.
pub fn catch_torch_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    let was = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TlError::Torch {
            context: what.to_string(),
            msg: e.to_string(),
        }),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            Err(TlError::Torch {
                context: what.to_string(),
                msg: crate::error::first_line(&text),
            })
        }
    }
}
