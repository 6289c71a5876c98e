//! A Server-Sent Events member for the load generator: `GET /sse` on a
//! plain socket, the stream read in place (lines split by hand, the
//! `[seq, ts]` of each `msg` event read straight from its `data:` JSON), so
//! that the generator costs about what its WebSocket member costs.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One open stream whose room's `join` has arrived.
pub struct SseStream {
    stream: TcpStream,
    /// Bytes read and not yet parsed (an unfinished line).
    buf: Vec<u8>,
    /// The current event is a `msg`.
    in_msg: bool,
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

impl SseStream {
    /// Opens `GET /sse?rooms=ROOM&user=USER[&presence=false]` and reads
    /// until the room's `join` event (or fails on an `err` event).
    pub async fn open(addr: &str, user: &str, room: &str, quiet: bool) -> Result<SseStream> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let presence = if quiet { "&presence=false" } else { "" };
        let request = format!(
            "GET /sse?rooms={room}&user={user}{presence} HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        // The response head, then events up to the join.
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("stream closed before its join");
            }
            let Some(head_end) = find(&buf, b"\r\n\r\n") else {
                continue;
            };
            if !buf.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "refused: {}",
                    String::from_utf8_lossy(&buf[..head_end]).trim()
                );
            }
            buf.drain(..head_end + 4);
            break;
        }
        loop {
            if let Some(end) = find(&buf, b"\n\n") {
                let event = buf.drain(..end + 2).collect::<Vec<u8>>();
                if event.starts_with(b"event: join\n") {
                    break;
                }
                if event.starts_with(b"event: err\n") {
                    bail!("{}", String::from_utf8_lossy(&event));
                }
                continue;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("stream closed before its join");
            }
        }
        Ok(SseStream {
            stream,
            buf,
            in_msg: false,
        })
    }

    /// Waits for more of the stream and returns the `[seq, ts]` of every
    /// `msg` event completed by it; an error once the stream ends.
    pub async fn next_msgs(&mut self, out: &mut Vec<(u64, u64)>) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("stream ended");
        }
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + nl];
            start += nl + 1;
            if line.is_empty() {
                self.in_msg = false;
            } else if line == b"event: msg" {
                self.in_msg = true;
            } else if self.in_msg {
                if let Some(data) = line.strip_prefix(b"data: ") {
                    out.push(seq_and_ts(data).context("a msg without [seq, ts]")?);
                }
            }
        }
        self.buf.drain(..start);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `[seq, ts]` from a `msg` event's JSON: `..."data":[SEQ,TS]...`.
fn seq_and_ts(json: &[u8]) -> Option<(u64, u64)> {
    const KEY: &[u8] = b"\"data\":[";
    let at = find(json, KEY)? + KEY.len();
    let rest = &json[at..];
    let (seq, used) = int(rest)?;
    let rest = rest.get(used..)?.strip_prefix(b",")?;
    let (ts, _) = int(rest)?;
    Some((seq, ts))
}

fn int(s: &[u8]) -> Option<(u64, usize)> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let text = std::str::from_utf8(s.get(..digits)?).ok()?;
    Some((text.parse().ok()?, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seq_and_ts_from_a_msg() {
        let line =
            br#"{"data":[17,1733300000123456789],"from":"publisher","offset":18,"room":"r"}"#;
        assert_eq!(seq_and_ts(line), Some((17, 1_733_300_000_123_456_789)));
        assert_eq!(seq_and_ts(br#"{"data":"x"}"#), None);
    }
}
