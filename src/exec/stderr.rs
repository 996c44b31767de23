//! A command's stderr as task log lines: read as bytes and decoded lossily (no byte ends the
//! reader, so the program never dies of a closed pipe), each line cut at `exec.log_line_max_bytes`
//! and the task's lines capped at `exec.log_max_lines_per_task`; what was cut is counted and told
//! in one final line.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::ExecConfig;
use crate::queue::Queue;

/// Lines written to the store in one transaction at most.
const BATCH_LINES: usize = 64;

/// How long a partial batch waits for more lines before it is written.
const QUIET_FLUSH: Duration = Duration::from_millis(200);

/// The limits of a task's log.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Most lines per task, over all its attempts.
    pub max_lines: u32,
    /// Longest line, in bytes.
    pub line_max_bytes: usize,
}

impl From<&ExecConfig> for LogLimits {
    fn from(c: &ExecConfig) -> Self {
        LogLimits {
            max_lines: c.log_max_lines_per_task,
            line_max_bytes: c.log_line_max_bytes,
        }
    }
}

/// One line read from a stream: its first bytes, and how many bytes of it were dropped.
struct RawLine {
    kept: Vec<u8>,
    cut_bytes: u64,
}

/// Reads the next line of `reader` (without its `\n`), keeping at most `max` bytes of it and
/// counting the rest; `None` at the end of the stream. Memory stays bounded by `max` whatever
/// the line's length.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<RawLine>> {
    let mut line = RawLine {
        kept: Vec::new(),
        cut_bytes: 0,
    };
    let mut saw_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(saw_any.then_some(line));
        }
        saw_any = true;
        let (chunk, end_of_line) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        let room = max.saturating_sub(line.kept.len());
        let keep = chunk.len().min(room);
        line.kept.extend_from_slice(&chunk[..keep]);
        line.cut_bytes += (chunk.len() - keep) as u64;
        let consumed = end_of_line.unwrap_or(chunk.len());
        reader.consume(consumed);
        if end_of_line.is_some() {
            return Ok(Some(line));
        }
    }
}

/// The text of a line, at most `max` bytes: invalid UTF-8 becomes U+FFFD, a character split by
/// the reader's cut (`reader_cut`) is dropped rather than replaced, and a text that replacements made longer
/// is cut on a character boundary. Returns the text and the bytes dropped here.
fn decode(bytes: &[u8], max: usize, reader_cut: bool) -> (String, u64) {
    let whole = if reader_cut {
        incomplete_tail(bytes)
    } else {
        bytes.len()
    };
    let mut cut = (bytes.len() - whole) as u64;
    let mut text = String::from_utf8_lossy(&bytes[..whole]).into_owned();
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        cut += (text.len() - end) as u64;
        text.truncate(end);
    }
    (text, cut)
}

/// The length of `bytes` without a UTF-8 sequence its end cuts short.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return len,
        };
        return if back < needed { len - back } else { len };
    }
    len
}

/// The final line of a log whose lines or line ends were cut.
fn cut_marker(lines: u64, bytes: u64, limits: LogLimits) -> String {
    format!(
        "[keel] {lines} lines / {bytes} bytes of stderr cut (exec.log_max_lines_per_task = {}, exec.log_line_max_bytes = {})",
        limits.max_lines, limits.line_max_bytes
    )
}

/// Reads `stream` to its end and appends its lines to task `task_id`'s log within `limits`.
/// Lines are written in batches, and a partial batch after a quiet moment, so a live view sees
/// them while the program runs. A write that fails is logged and the reading goes on: the
/// program's stderr is always drained.
pub async fn forward<R: AsyncBufRead + Unpin + Send>(
    mut stream: R,
    queue: Arc<Queue>,
    task_id: Uuid,
    limits: LogLimits,
) {
    let already = queue.log_count(task_id).await.unwrap_or(0);
    let mut room = limits.max_lines.saturating_sub(already);
    let (lines_tx, mut lines_rx) = mpsc::channel::<String>(BATCH_LINES * 4);
    let read = async move {
        let (mut cut_lines, mut cut_bytes) = (0u64, 0u64);
        loop {
            let line = match read_line(&mut stream, limits.line_max_bytes).await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(task = %task_id, error = %e, "cannot read a command's stderr");
                    break;
                }
            };
            if room == 0 {
                cut_lines += 1;
                cut_bytes += line.kept.len() as u64 + line.cut_bytes;
                continue;
            }
            let (text, decode_cut) = decode(&line.kept, limits.line_max_bytes, line.cut_bytes > 0);
            cut_bytes += line.cut_bytes + decode_cut;
            room -= 1;
            if lines_tx.send(text).await.is_err() {
                return;
            }
        }
        if cut_lines > 0 || cut_bytes > 0 {
            let _ = lines_tx
                .send(cut_marker(cut_lines, cut_bytes, limits))
                .await;
        }
    };
    let write = async move {
        let mut batch = Vec::new();
        loop {
            match tokio::time::timeout(QUIET_FLUSH, lines_rx.recv()).await {
                Ok(Some(line)) => {
                    batch.push(line);
                    if batch.len() < BATCH_LINES {
                        continue;
                    }
                }
                Ok(None) => break,
                Err(_) => {}
            }
            append(&queue, task_id, &mut batch).await;
        }
        append(&queue, task_id, &mut batch).await;
    };
    tokio::join!(read, write);
}

async fn append(queue: &Queue, task_id: Uuid, batch: &mut Vec<String>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = queue.append_logs(task_id, std::mem::take(batch)).await {
        tracing::warn!(task = %task_id, error = %e, "cannot store a command's log lines");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<(Vec<u8>, u64)> {
        let mut reader = tokio::io::BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut reader, max).await.unwrap() {
            out.push((line.kept, line.cut_bytes));
        }
        out
    }

    #[tokio::test]
    async fn lines_are_cut_at_the_limit_across_buffer_refills() {
        let lines = lines_of(b"short\n0123456789abcdef\n\nlast", 10).await;
        assert_eq!(
            lines,
            vec![
                (b"short".to_vec(), 0),
                (b"0123456789".to_vec(), 6),
                (Vec::new(), 0),
                (b"last".to_vec(), 0),
            ]
        );
    }

    #[test]
    fn invalid_bytes_decode_lossily_and_cuts_fall_on_character_boundaries() {
        assert_eq!(decode(b"\xffok", 100, false), ("\u{fffd}ok".to_string(), 0));
        // "é" is two bytes: a cut after its first byte drops that byte instead of replacing it.
        assert_eq!(decode(&"aé".as_bytes()[..2], 2, true), ("a".to_string(), 1));
        assert_eq!(decode("aé".as_bytes(), 3, false), ("aé".to_string(), 0));
        // Two invalid bytes become six bytes of replacement characters, cut back to four.
        assert_eq!(decode(b"\xff\xfe", 4, false), ("\u{fffd}".to_string(), 3));
    }
}
