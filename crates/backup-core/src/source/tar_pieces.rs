//! A tar stream someone else writes (`pg_basebackup -Ft`), sent as [`Piece`]s: the members'
//! boundaries are read from their headers as the bytes pass, so that large files' data is
//! fenced by cuts and small files are grouped, as for a volume Lifeboat tars itself.
//!
//! Without this, a tar of a data directory is one stream of content-defined chunks: a small
//! file that changed (a catalog, the backup manifest) drags its neighbours' megabyte-sized
//! chunk along, and a changed relation file the chunks on both sides of it. A stream that
//! stops looking like tar (a bad header checksum) is passed on as plain bytes: the backup is
//! the same, only less deduplicated.

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{ByteStream, Piece, PieceContext};

const BLOCK: usize = 512;
/// Bytes pieces are sent in runs of at most this much.
const RUN: usize = 256 * 1024;

/// Where the splitter is in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a 512-byte header.
    Header,
    /// A member's data (`fenced`: cut before and after).
    Data { left: u64, fenced: bool },
    /// Zero padding to the next 512-byte boundary.
    Padding { left: u64 },
    /// After the end-of-archive marker, or once the stream is not tar: bytes as they come.
    Plain,
}

/// Turns tar bytes into pieces; [`TarSplitter::push`] as bytes arrive, then
/// [`TarSplitter::finish`].
pub struct TarSplitter {
    aligned_min: u64,
    group_min: u64,
    state: State,
    header: Vec<u8>,
    pending: Vec<u8>,
    since_cut: u64,
    /// Padding after the current member's data.
    padding: u64,
    out: Vec<Piece>,
}

impl TarSplitter {
    pub fn new(ctx: &PieceContext) -> TarSplitter {
        TarSplitter {
            aligned_min: ctx.aligned_min,
            group_min: ctx.group_min,
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            pending: Vec::new(),
            since_cut: 0,
            padding: 0,
            out: Vec::new(),
        }
    }

    /// Consumes `data`; returns the pieces that are complete.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Piece> {
        while !data.is_empty() {
            data = match self.state {
                State::Header => self.header_bytes(data),
                State::Data { left, fenced } => {
                    let n = (left.min(data.len() as u64)) as usize;
                    self.emit(&data[..n]);
                    let left = left - n as u64;
                    if left == 0 {
                        self.end_of_data(fenced);
                    } else {
                        self.state = State::Data { left, fenced };
                    }
                    &data[n..]
                }
                State::Padding { left } => {
                    let n = (left.min(data.len() as u64)) as usize;
                    self.emit(&data[..n]);
                    self.state = match left - n as u64 {
                        0 => State::Header,
                        left => State::Padding { left },
                    };
                    &data[n..]
                }
                State::Plain => {
                    self.emit(data);
                    &[]
                }
            };
        }
        if self.pending.len() >= RUN {
            self.flush();
        }
        std::mem::take(&mut self.out)
    }

    /// The rest, at the end of the stream.
    pub fn finish(mut self) -> Vec<Piece> {
        let partial = std::mem::take(&mut self.header);
        self.emit(&partial);
        self.flush();
        self.out
    }

    fn header_bytes<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let n = (BLOCK - self.header.len()).min(data.len());
        self.header.extend_from_slice(&data[..n]);
        if self.header.len() == BLOCK {
            let h = std::mem::take(&mut self.header);
            self.member(&h);
        }
        &data[n..]
    }

    /// One complete header: where its data goes, and the cuts around it.
    fn member(&mut self, h: &[u8]) {
        let Some((size, kind)) = parse_header(h) else {
            // The end-of-archive marker (zero blocks), or not tar after all.
            self.emit(h);
            self.state = State::Plain;
            return;
        };
        // Regular files carry data worth fencing; pax and GNU long-name records carry
        // metadata that belongs with the header.
        let file = matches!(kind, b'0' | 0 | b'7');
        let fenced = file && size >= self.aligned_min && self.aligned_min > 0;
        if !fenced && self.group_min > 0 && self.since_cut >= self.group_min {
            self.cut(Piece::Cut);
        }
        self.emit(h);
        if fenced {
            self.cut(Piece::File(None));
        }
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        if size == 0 {
            self.end_of_data(fenced);
        } else {
            self.state = State::Data { left: size, fenced };
        }
    }

    fn end_of_data(&mut self, fenced: bool) {
        if fenced {
            self.cut(Piece::Cut);
        }
        self.state = match self.padding {
            0 => State::Header,
            left => State::Padding { left },
        };
    }

    fn emit(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        self.since_cut += data.len() as u64;
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.out
                .push(Piece::Bytes(std::mem::take(&mut self.pending)));
        }
    }

    fn cut(&mut self, piece: Piece) {
        self.flush();
        self.out.push(piece);
        self.since_cut = 0;
    }
}

/// A header's data size and type flag, if it is a valid tar header (checksum right).
fn parse_header(h: &[u8]) -> Option<(u64, u8)> {
    if h.iter().all(|b| *b == 0) {
        return None;
    }
    let stored = octal(&h[148..156])?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return None;
    }
    let size = if h[124] & 0x80 != 0 {
        // GNU base-256 for sizes of 8 GiB and more.
        h[125..136]
            .iter()
            .fold(0u64, |a, b| (a << 8) | u64::from(*b))
    } else {
        octal(&h[124..136])?
    };
    Some((size, h[156]))
}

fn octal(field: &[u8]) -> Option<u64> {
    let s: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// Reads `input` to its end and sends it as pieces; an error reading is returned (the
/// producer's own failure is reported by the source's `finish`).
pub async fn send_tar_pieces(
    mut input: ByteStream,
    ctx: PieceContext,
    tx: mpsc::Sender<Piece>,
) -> std::io::Result<()> {
    let mut split = TarSplitter::new(&ctx);
    let mut buf = vec![0u8; RUN];
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for p in split.push(&buf[..n]) {
            if tx.send(p).await.is_err() {
                return Ok(());
            }
        }
    }
    for p in split.finish() {
        if tx.send(p).await.is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `files` (name, size), each filled with its index.
    fn tar_of(files: &[(&str, usize)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (name, size)) in files.iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_size(*size as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, &vec![i as u8 + 1; *size][..])
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn split(data: &[u8], step: usize) -> Vec<Piece> {
        let ctx = PieceContext {
            aligned_min: 1000,
            group_min: 3000,
            ..Default::default()
        };
        let mut s = TarSplitter::new(&ctx);
        let mut out = Vec::new();
        for part in data.chunks(step) {
            out.extend(s.push(part));
        }
        out.extend(s.finish());
        out
    }

    /// The pieces as text: `B<n>` bytes, `F` a file fence, `|` a cut.
    fn shape(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Bytes(b) => format!("B{}", b.len()),
                Piece::File(_) => "F".into(),
                Piece::Cut => "|".into(),
                Piece::Stored(_) => "S".into(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn large_members_are_fenced_and_the_bytes_are_unchanged() {
        let data = tar_of(&[
            ("a", 10),
            ("big", 5000),
            ("b", 20),
            ("c", 2600),
            ("d", 10),
            ("e", 900),
            ("f", 900),
            ("g", 900),
        ]);
        for step in [1, 7, 512, 4096, data.len()] {
            let pieces = split(&data, step);
            let bytes: Vec<u8> = pieces
                .iter()
                .flat_map(|p| match p {
                    Piece::Bytes(b) => b.clone(),
                    _ => Vec::new(),
                })
                .collect();
            assert!(bytes == data, "step {step}: the stream passes unchanged");
            let mut merged = Vec::new();
            for p in pieces {
                match (merged.last_mut(), p) {
                    (Some(Piece::Bytes(a)), Piece::Bytes(b)) => a.extend(b),
                    (_, p) => merged.push(p),
                }
            }
            // a (header, data, padding) and big's header; big's data fenced; its padding, b
            // and c's header; c's data fenced; its padding, d and e, which reach the group
            // size, so a cut before f's header; f, g and the end-of-archive blocks.
            assert_eq!(
                shape(&merged),
                "B1536 F B5000 | B1656 F B2600 | B3032 | B4096",
                "step {step}"
            );
        }
    }

    #[test]
    fn a_stream_that_is_not_tar_passes_as_bytes() {
        let mut data = tar_of(&[("big", 5000)]);
        data[0] ^= 0xff;
        let pieces = split(&data, 100);
        assert!(pieces.iter().all(|p| matches!(p, Piece::Bytes(_))));
        assert_eq!(
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Bytes(b) => b.len(),
                    _ => 0,
                })
                .sum::<usize>(),
            data.len()
        );
    }
}
