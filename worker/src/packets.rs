//! A stream's encoded packets exactly as its encoder made them, for the join to
//! remux without re-encoding: a chunk's video, or a job's whole audio.
//!
//! No container stands between the encoder and the join, so nothing shifts a
//! timestamp, rewrites a duration or reorders a packet: each record keeps the
//! encoder's pts, dts and duration in the encoder's time base (for video, frame
//! numbers on the job's frame grid). The header keeps what the join needs to
//! declare the stream: codec, size or sample rate, and the codec's extradata
//! (H.264's SPS and PPS, AAC's AudioSpecificConfig).
//!
//! Layout, little-endian: `DRKPKT1\n`, then a JSON header line, then per packet
//! `pts i64, dts i64, duration i64, flags u32 (1: key), size u32`, and the bytes.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"DRKPKT1\n";
/// Largest packet accepted when reading (a 4K intra frame is a few MB).
const MAX_PACKET: u32 = 64 << 20;

/// What the join needs to declare the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// libav codec name (`h264`, `aac`).
    pub codec: String,
    /// The encoder's time base: `1/fps`-like for video, `1/sample_rate` for audio.
    pub time_base: (i32, i32),
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
    pub channels: u32,
    /// The codec's extradata, hex.
    pub extradata: String,
    /// The encoder's bit rate, if it declared one.
    pub bit_rate: i64,
    /// Audio: samples per frame, and the encoder's priming before the first sample.
    #[serde(default)]
    pub frame_size: i32,
    #[serde(default)]
    pub initial_padding: i32,
    /// Video: frames of reordering delay (B-frames).
    #[serde(default)]
    pub video_delay: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub pts: i64,
    pub dts: i64,
    pub duration: i64,
    pub key: bool,
    pub data: Vec<u8>,
}

pub struct Writer {
    out: BufWriter<std::fs::File>,
}

impl Writer {
    pub fn create(path: &Path, header: &StreamHeader) -> std::io::Result<Writer> {
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        out.write_all(MAGIC)?;
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Writer { out })
    }

    pub fn write(&mut self, pts: i64, dts: i64, duration: i64, key: bool, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(std::io::Error::other)?;
        for v in [pts, dts, duration] {
            self.out.write_all(&v.to_le_bytes())?;
        }
        self.out.write_all(&u32::from(key).to_le_bytes())?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(data)
    }

    /// Flushes and syncs the file.
    pub fn finish(self) -> std::io::Result<()> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

pub struct Reader {
    input: BufReader<std::fs::File>,
    pub header: StreamHeader,
}

impl Reader {
    pub fn open(path: &Path) -> std::io::Result<Reader> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
        let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut magic = [0u8; MAGIC.len()];
        input.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(bad("not a packet file"));
        }
        let mut line = Vec::new();
        input.by_ref().take(64 * 1024).read_until(b'\n', &mut line)?;
        let header = serde_json::from_slice(&line).map_err(|e| bad(&format!("header: {e}")))?;
        Ok(Reader { input, header })
    }

    /// The next packet, or `None` at the end of the file.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut head = [0u8; 32];
        match self.input.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        self.input.read_exact(&mut head[1..])?;
        let i64_at = |i: usize| i64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let size = u32_at(28);
        if size > MAX_PACKET {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a packet of {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        self.input.read_exact(&mut data)?;
        Ok(Some(Record { pts: i64_at(0), dts: i64_at(8), duration: i64_at(16), key: u32_at(24) & 1 != 0, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pkts");
        let header = StreamHeader {
            codec: "h264".into(),
            time_base: (1001, 30000),
            width: 640,
            height: 360,
            sample_rate: 0,
            channels: 0,
            extradata: "0164001f".into(),
            bit_rate: 0,
            frame_size: 0,
            initial_padding: 0,
            video_delay: 2,
        };
        let mut w = Writer::create(&path, &header).unwrap();
        w.write(1799, 1797, 1, true, b"idr").unwrap();
        w.write(1802, 1798, 1, false, b"").unwrap();
        w.finish().unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.header, header);
        assert_eq!(r.next_record().unwrap(), Some(Record { pts: 1799, dts: 1797, duration: 1, key: true, data: b"idr".to_vec() }));
        assert_eq!(r.next_record().unwrap(), Some(Record { pts: 1802, dts: 1798, duration: 1, key: false, data: vec![] }));
        assert_eq!(r.next_record().unwrap(), None);
        std::fs::write(&path, b"not packets").unwrap();
        assert!(Reader::open(&path).is_err());
    }
}
