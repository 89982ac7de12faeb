//! Rust's diagnostics in the browser console. A wasm module has no stderr: without this the
//! engine's own `tracing` warnings (a kernel falling back, a legacy checkpoint read another
//! way) and the `log` records of wgpu and CubeCL (a WGSL shader or pipeline the browser refused
//! is only logged there on WebAssembly, not returned as an error) are dropped. Each event becomes
//! one `console.error` / `warn` / `info` / `debug` call by its level.
//!
//! The level comes from the worker's global `nullpaintLogLevel` ("error", "warn", "info",
//! "debug", "trace"; default "warn"), which `www/worker.js` takes from the page's `?log=` query.

use std::io::Write;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The level named by `name`, `None` for anything else.
pub fn parse_level(name: &str) -> Option<Level> {
    match name.trim().to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" | "warning" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    }
}

/// Sends `tracing` events and `log` records up to `level` to the console. Once per instance
/// (a second call changes nothing).
pub fn install(level: Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_target(true)
        .with_writer(Console)
        .finish()
        .try_init();
}

/// Makes one [`Line`] per event, carrying the event's level.
struct Console;

impl<'a> MakeWriter<'a> for Console {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::new(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line::new(*meta.level())
    }
}

/// One formatted event, printed to the console when the formatter drops it.
struct Line {
    level: Level,
    text: Vec<u8>,
}

impl Line {
    fn new(level: Level) -> Self {
        Self {
            level,
            text: Vec::new(),
        }
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        print(self.level, text);
    }
}

#[cfg(target_arch = "wasm32")]
fn print(level: Level, text: &str) {
    let value = wasm_bindgen::JsValue::from_str(text);
    match level {
        Level::ERROR => web_sys::console::error_1(&value),
        Level::WARN => web_sys::console::warn_1(&value),
        Level::INFO => web_sys::console::info_1(&value),
        _ => web_sys::console::debug_1(&value),
    }
}

/// Natively (the crate's unit tests) the console is stderr.
#[cfg(not(target_arch = "wasm32"))]
fn print(level: Level, text: &str) {
    eprintln!("[console.{}] {text}", level.as_str().to_ascii_lowercase());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_name() {
        assert_eq!(parse_level(" Warn "), Some(Level::WARN));
        assert_eq!(parse_level("debug"), Some(Level::DEBUG));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn a_line_keeps_what_the_formatter_wrote() {
        let mut line = Line::new(Level::ERROR);
        write!(line, "a shader was ").unwrap();
        line.write_all(b"refused\n").unwrap();
        assert_eq!(line.text, b"a shader was refused\n");
        assert_eq!(Console.make_writer().level, Level::INFO);
    }
}
