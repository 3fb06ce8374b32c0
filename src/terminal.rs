//! The CLI's progress on a terminal: one line per layer, updated in place, with the bytes of
//! its blob read (downloaded, from a registry) against its size, and the rate; or "cached".
//! Drawn by indicatif; the caller makes one only when stderr is a terminal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use strata::{Meter, Progress};

/// How often the bars are brought up to date.
const TICK: Duration = Duration::from_millis(100);

/// The lines on the terminal, and the meters behind them.
pub struct Bars {
    multi: MultiProgress,
    running: Arc<Mutex<Vec<(ProgressBar, Meter)>>>,
    ticker: Option<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Bars {
    /// Starts the display, and the thread that moves the bars.
    pub fn new() -> Bars {
        let running: Arc<Mutex<Vec<(ProgressBar, Meter)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (running, stop) = (running.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    update(&running);
                    thread::sleep(TICK);
                }
            })
        };
        Bars {
            multi: MultiProgress::new(),
            running,
            ticker: Some(ticker),
            stop,
        }
    }

    /// Shows `event`.
    pub fn show(&self, event: &Progress) {
        match event {
            Progress::Cached {
                index,
                count,
                layer,
            } => {
                let bar = self.multi.add(ProgressBar::new(layer.size));
                bar.set_style(style("{prefix} cached"));
                bar.set_prefix(prefix(*index, *count, layer));
                bar.finish();
            }
            Progress::Extracting {
                index,
                count,
                layer,
                meter,
            } => {
                let bar = self.multi.add(ProgressBar::new(layer.size));
                bar.set_style(style(
                    "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                ));
                bar.set_prefix(prefix(*index, *count, layer));
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((bar, meter.clone()));
            }
            Progress::Copying => {
                let _ = self.multi.println("strata: copying the root filesystem");
            }
            // Printed whether or not the bars can be drawn (`TERM` unset, say).
            Progress::Warning(warning) => {
                self.multi
                    .suspend(|| eprintln!("strata: warning: {warning}"));
            }
        }
    }
}

impl Drop for Bars {
    /// Leaves every line as it ended.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        update(&self.running);
        for (bar, _) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            bar.abandon();
        }
    }
}

/// Moves each running bar to where its meter is; a bar whose blob is read is done.
fn update(running: &Mutex<Vec<(ProgressBar, Meter)>>) {
    let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
    running.retain(|(bar, meter)| {
        bar.set_position(meter.read());
        let done = bar.length().is_some_and(|length| meter.read() >= length);
        if done {
            bar.finish();
        }
        !done
    });
}

fn prefix(index: usize, count: usize, layer: &strata::Layer) -> String {
    format!("layer {}/{count} {}", index + 1, layer.digest.short())
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the templates here are valid")
        .progress_chars("=> ")
}
