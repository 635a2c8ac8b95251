//! Compressed copies of a live version's large bodies, made once per body
//! and encoding and then shared by every answer of that version.
//!
//! Why: browsers, CDNs and most HTTP clients ask for compression unprompted,
//! and the compression layer (`election_http::layers`) compresses each
//! answer anew. For the bodies of one version, which every reader shares,
//! that is the same work again per request: the city list of the demo's 50
//! cities cost 150–310 µs per compressed answer against ~25 plain, and at
//! 10,000 cities the list is megabytes, so a few dozen requests asking for
//! `br` would hold both cores (docs/benchmarks.md, "Small answers
//! uncompressed", and "Large bodies compressed once per version"). Here the
//! first request of a version that asks for an encoding compresses the body
//! on the blocking pool, later ones of that version wait for it and share
//! the bytes; a version costs at most one compression per body and
//! encoding, whatever the number of readers.
//!
//! The answer says `Content-Encoding`, so the compression layer leaves it
//! alone, and `Vary: Accept-Encoding`, as the layer would. No crate does
//! this: tower-http's layer and `ServeDir`'s precompressed files do not
//! know a body's version.

use std::io::Write as _;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
// The compression layer's level, so a copy is the layer's answer made once.
use election_http::layers::COMPRESSION_LEVEL as LEVEL;
use tokio::sync::OnceCell;

/// An encoding a client may ask for and the service makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// Brotli (`br`): the smaller, preferred when both are acceptable.
    Br,
    /// gzip.
    Gzip,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The encoding to answer with, from the request's `Accept-Encoding`
/// (RFC 9110 §12.5.3): `br` when acceptable, else `gzip`, else none. A
/// coding with `q=0` is refused; `*` accepts any coding not named.
pub fn preferred(headers: &HeaderMap) -> Option<Coding> {
    let (br, gzip, any) = accepted(headers);
    if br.or(any) == Some(true) {
        Some(Coding::Br)
    } else if gzip.or(any) == Some(true) {
        Some(Coding::Gzip)
    } else {
        None
    }
}

/// Whether the request's `Accept-Encoding` accepts gzip (named with `q` >
/// 0, or `*` when gzip is not named): the one encoding the live stream
/// offers (`crate::gzip_stream`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (_, gzip, any) = accepted(headers);
    gzip.or(any) == Some(true)
}

/// What `Accept-Encoding` says of `br`, `gzip` and `*`: unnamed (`None`),
/// acceptable or refused (`q=0`).
fn accepted(headers: &HeaderMap) -> (Option<bool>, Option<bool>, Option<bool>) {
    let mut br = None;
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(list) = value.to_str() else { continue };
        for item in list.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let acceptable = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .all(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
            if name.eq_ignore_ascii_case("br") {
                br = Some(acceptable);
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(acceptable);
            } else if name == "*" {
                any = Some(acceptable);
            }
        }
    }
    (br, gzip, any)
}

/// The compressed copies of one body, each made when first asked for.
#[derive(Debug, Default)]
pub struct Copies {
    br: OnceCell<Bytes>,
    gzip: OnceCell<Bytes>,
}

impl Copies {
    /// `body` encoded with `coding`, compressed on the blocking pool by the
    /// first caller; `None` if compressing failed (then the caller answers
    /// as it would have without copies).
    pub async fn get(&self, coding: Coding, body: &Bytes) -> Option<Bytes> {
        let cell = match coding {
            Coding::Br => &self.br,
            Coding::Gzip => &self.gzip,
        };
        cell.get_or_try_init(|| {
            let body = body.clone();
            async move {
                tokio::task::spawn_blocking(move || compress(coding, &body))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|compressed| compressed)
                    .inspect_err(|error| {
                        tracing::warn!(error = %error, coding = coding.name(), "compressing a body");
                    })
            }
        })
        .await
        .ok()
        .cloned()
    }
}

/// `body` compressed with `coding`.
pub fn compress(coding: Coding, body: &[u8]) -> std::io::Result<Bytes> {
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    match coding {
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: LEVEL as i32,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
        }
        Coding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(LEVEL));
            encoder.write_all(body)?;
            encoder.finish()?;
        }
    }
    Ok(Bytes::from(out))
}

/// The headers of an answer whose body is encoded with `coding`.
pub fn mark(headers: &mut HeaderMap, coding: Coding) {
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.name()),
    );
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn negotiation_prefers_br_and_honours_q_zero_and_star() {
        for (value, expected) in [
            ("gzip, deflate, br, zstd", Some(Coding::Br)),
            ("gzip, deflate", Some(Coding::Gzip)),
            ("GZIP", Some(Coding::Gzip)),
            ("br;q=0, gzip;q=0.5", Some(Coding::Gzip)),
            ("br;q=0, gzip;q=0", None),
            ("*", Some(Coding::Br)),
            ("br;q=0, *", Some(Coding::Gzip)),
            ("*;q=0", None),
            ("identity", None),
            ("deflate", None),
            ("", None),
            ("gzip;q=nonsense", None),
        ] {
            assert_eq!(preferred(&accept(value)), expected, "{value}");
        }
        assert_eq!(preferred(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn copies_decode_to_the_body_and_are_made_once() {
        let body = Bytes::from("{\"cities\":[".to_owned() + &"{\"a\":1},".repeat(500) + "]}");
        let copies = Copies::default();
        let gzip = copies.get(Coding::Gzip, &body).await.unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
        let br = copies.get(Coding::Br, &body).await.unwrap();
        let mut plain = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
        assert!(br.len() < body.len() / 10, "{} bytes", br.len());
        // The same bytes again, not a second compression.
        let again = copies.get(Coding::Gzip, &body).await.unwrap();
        assert_eq!(again.as_ptr(), gzip.as_ptr());
    }
}
