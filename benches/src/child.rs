//! A worker process the benchmark drives: this same binary run with a
//! worker subcommand. It prints `ready OPENED FAILED` once its connections
//! are open, takes lines on its stdin (end of input: stop), and answers
//! with lines on its stdout, the last one its report.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct Worker {
    /// Connections it opened (and joined), and those that failed.
    pub opened: usize,
    pub failed: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts `subcommand args` and waits for its `ready`.
    pub async fn start(subcommand: &str, args: Vec<String>) -> Result<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(subcommand)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut w = Worker {
            opened: 0,
            failed: 0,
            child,
            stdin,
            stdout,
        };
        let line = w.stdout.next_line().await?;
        let counts: Vec<usize> = line
            .as_deref()
            .and_then(|l| l.strip_prefix("ready "))
            .map(|rest| rest.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        match counts[..] {
            [opened, failed] => {
                (w.opened, w.failed) = (opened, failed);
                Ok(w)
            }
            _ => bail!("worker did not get ready: {line:?}"),
        }
    }

    /// Tells it one line.
    pub async fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Its next line.
    pub async fn line(&mut self) -> Result<String> {
        self.stdout.next_line().await?.context("worker ended")
    }

    /// The newest progress line's count (messages received so far).
    pub async fn received(&mut self) -> Result<u64> {
        loop {
            if let Some(n) = self.line().await?.strip_prefix("received ") {
                return Ok(n.parse()?);
            }
        }
    }

    /// Closes its input (it stops) and returns its report: its first line
    /// after that which is not progress.
    pub async fn finish(mut self) -> Result<String> {
        drop(self.stdin.take());
        loop {
            let line = self.line().await.context("no report")?;
            if !line.starts_with("received ") {
                let _ = self.child.wait().await;
                return Ok(line);
            }
        }
    }
}

/// Runs `futs` at once, each in a task; their outputs in order (a task
/// that panicked is left out).
pub async fn join_all<F>(futs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut handles = Vec::new();
    for f in futs {
        handles.push(tokio::spawn(f));
    }
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
