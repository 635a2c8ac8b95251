//! A gzip-encoded event stream whose events are compressed once and shared
//! by every subscriber.
//!
//! Why: at 10,000 cities a full subscriber is sent ~0.5 MiB of JSON a
//! second (docs/benchmarks.md, "The live stream"), through CDNs and to
//! browsers that all ask for compression. The compression layer
//! (`election_http::layers`) leaves event streams alone, because it would
//! keep a compressor per subscriber and compress each shared event once per
//! subscriber: thousands of times the work of rendering it.
//!
//! Here each event is compressed once, into a [`Segment`]: raw DEFLATE from
//! a fresh compressor, ended by a sync flush. A sync flush ends on a byte
//! boundary with no final block, and a fresh compressor refers to nothing
//! before it, so any sequence of segments, in any order, is one valid
//! DEFLATE stream (RFC 1951 §3.2.3: back-references stay within a segment;
//! the empty stored block of the flush is legal anywhere). A subscriber's
//! response is one gzip member (RFC 1952): [`HEADER`], the segments of its
//! events as they are sent, and, when the stream ends, the last block and
//! the trailer ([`Member::trailer`]). The trailer's CRC-32 of everything
//! sent is combined from the segments' own CRCs (`crc32fast`'s `combine`),
//! never computed over the bytes again. Because every event ends with a
//! flush, a client's decompressor can hand over each whole event as soon as
//! it arrives: the stream is as live as the plain one.
//!
//! No crate does this: `async-compression` and `flate2` compress a stream
//! for one reader; sharing their output between readers that start at
//! different events needs segments that do not depend on what came before.
//! The cost is the ratio: each event is compressed without the dictionary
//! of the ones before it (measured in docs/benchmarks.md, "The live stream
//! compressed once").

use axum::body::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

/// The gzip member header: DEFLATE, no flags, no modification time, no
/// extra flags, operating system unknown.
pub const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The compression level of events below [`LARGE`]: the deltas, made five
/// times a second and sent to every subscriber. The best level costs a few
/// milliseconds once per delta and cut a gzip subscriber's bytes by a tenth
/// against the compression layer's level (docs/benchmarks.md, "The live
/// stream compressed once").
const SMALL_LEVEL: u32 = 9;

/// Events this large (whole snapshots: megabytes at 10,000 cities) use the
/// compression layer's level, as the other compressed bodies do
/// (`crate::precompressed`): at the best level one would take half a second
/// of a core, once per version that a gzip subscriber connects in.
const LARGE: usize = 256 * 1024;

/// The level for an event of `len` bytes.
fn level(len: usize) -> u32 {
    if len < LARGE {
        SMALL_LEVEL
    } else {
        election_http::layers::COMPRESSION_LEVEL
    }
}

/// One event compressed: raw DEFLATE ending with a sync flush, and what the
/// trailer needs of the bytes it encodes.
#[derive(Clone, Debug)]
pub struct Segment {
    /// The compressed bytes, sent as they are.
    pub deflate: Bytes,
    /// CRC-32 of the plain bytes.
    crc: u32,
    /// The number of plain bytes.
    len: u64,
}

impl Segment {
    /// `plain` compressed by a fresh compressor and flushed.
    pub fn new(plain: &[u8]) -> std::io::Result<Segment> {
        let mut compressor = Compress::new(Compression::new(level(plain.len())), false);
        let mut out = Vec::with_capacity(plain.len() / 4 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let consumed = usize::try_from(compressor.total_in()).unwrap_or(plain.len());
            let status = compressor
                .compress_vec(
                    &plain[consumed.min(plain.len())..],
                    &mut out,
                    FlushCompress::Sync,
                )
                .map_err(std::io::Error::other)?;
            // zlib's rule: a flush is complete when it left output space
            // unused; until then call again with more room.
            let all_in = compressor.total_in() == plain.len() as u64;
            if all_in && out.len() < out.capacity() {
                break;
            }
            if status == Status::BufError && out.len() < out.capacity() {
                return Err(std::io::Error::other("the compressor made no progress"));
            }
        }
        Ok(Segment {
            deflate: Bytes::from(out),
            crc: crc32fast::hash(plain),
            len: plain.len() as u64,
        })
    }
}

/// One subscriber's gzip member: what its trailer must say about the
/// segments sent so far.
#[derive(Debug, Default)]
pub struct Member {
    crc: crc32fast::Hasher,
}

impl Member {
    /// Counts `segment` as sent.
    pub fn add(&mut self, segment: &Segment) {
        self.crc.combine(&crc32fast::Hasher::new_with_initial_len(
            segment.crc,
            segment.len,
        ));
    }

    /// What ends the member: an empty final block (fixed Huffman codes,
    /// `03 00`), the CRC-32 of everything sent and its length modulo 2^32,
    /// both little-endian.
    pub fn trailer(self) -> Bytes {
        let mut trailer = Vec::with_capacity(10);
        trailer.extend_from_slice(&[0x03, 0x00]);
        let len = self.crc.total_len();
        trailer.extend_from_slice(&self.crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
        trailer.extend_from_slice(&((len & 0xffff_ffff) as u32).to_le_bytes());
        Bytes::from(trailer)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn member(events: &[&[u8]]) -> Vec<u8> {
        let mut member = Member::default();
        let mut bytes = HEADER.to_vec();
        for event in events {
            let segment = Segment::new(event).unwrap();
            member.add(&segment);
            bytes.extend_from_slice(&segment.deflate);
        }
        bytes.extend_from_slice(&member.trailer());
        bytes
    }

    #[test]
    fn segments_in_any_order_make_one_gzip_member_with_a_true_trailer() {
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"city\":\"c{}\",\"votes\":{i}}},", i % 977).into_bytes())
            .collect();
        let events: [&[u8]; 5] = [
            b"retry: 2000\n",
            b"event: snapshot\nid: 7\ndata: {\"a\":1}\n\n",
            &big,
            b"",
            b": keep-alive\n\n",
        ];
        for order in [[0, 1, 2, 3, 4], [4, 2, 0, 3, 1]] {
            let picked: Vec<&[u8]> = order.iter().map(|&i| events[i]).collect();
            let gz = member(&picked);
            // GzDecoder checks the trailer's CRC and length, and fails on
            // anything after the member or a truncated one.
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, picked.concat());
        }
        assert!(Segment::new(&big).unwrap().deflate.len() < big.len() / 5);
    }

    #[test]
    fn a_member_with_no_event_is_a_valid_empty_one() {
        let gz = member(&[]);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert!(plain.is_empty());
    }

    #[test]
    fn a_wrong_trailer_is_refused_so_the_check_above_can_fail() {
        let mut gz = member(&[b"event: delta\nid: 1\ndata: {}\n\n"]);
        let crc_at = gz.len() - 8;
        gz[crc_at] ^= 1;
        let mut plain = Vec::new();
        assert!(
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut plain)
                .is_err()
        );
    }

    #[test]
    fn each_event_decodes_whole_before_the_next_is_sent() {
        // A live stream has no trailer yet: after each segment, a streaming
        // decompressor must already give out the whole event.
        let events: [&[u8]; 3] = [
            b"retry: 2000\n",
            b"event: snapshot\nid: 1\ndata: {\"cities\":[]}\n\n",
            b"event: delta\nid: 2\ndata: {\"previous\":1}\n\n",
        ];
        let mut sent = HEADER.to_vec();
        let mut decoder = flate2::Decompress::new(false);
        let mut plain: Vec<u8> = Vec::with_capacity(4096);
        let mut expected = Vec::new();
        for event in events {
            sent.extend_from_slice(&Segment::new(event).unwrap().deflate);
            expected.extend_from_slice(event);
            let body = &sent[HEADER.len()..];
            let from = usize::try_from(decoder.total_in()).unwrap();
            decoder
                .decompress_vec(&body[from..], &mut plain, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(plain, expected);
        }
    }
}
