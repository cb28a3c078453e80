//! RFC 6455 framing: decode frames into messages, encode frames.
//!
//! Why our own codec: an idle hub socket must cost well under a kilobyte, and
//! the stream-owning codecs keep a read buffer per socket for its whole life
//! (tungstenite: 128 KiB by default). This decoder works on a buffer its
//! caller lends it for one read, keeps state only while a message is
//! fragmented, and validates everything the RFC requires of a server:
//! masking, reserved bits, opcodes, control-frame rules, fragmentation order,
//! close payloads and UTF-8 (failing fast inside fragmented text).
//!
//! tungstenite's `FrameHeader` and `CloseCode` are not used: tungstenite is
//! only a test dependency, and taking it into the hub for a header parse
//! would bring its HTTP, SHA-1 and RNG crates for what is one pass here.
//!
//! It is role-aware so the benchmark's client can use it too.
//! Must not: allocate for an unfragmented message, or do I/O.

use ring::digest;

use crate::error::CloseCode;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Which side of the connection the decoder sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Frames from clients must be masked.
    Server,
    /// Frames from servers must not be masked.
    Client,
}

/// A complete message (or control frame), borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// Close with an optional (code, reason).
    Close(Option<(u16, &'a str)>),
    /// A data frame that completes no message (a fragment of one still
    /// arriving). Reported so that every frame costs its sender budget.
    Fragment,
}

/// Whether the consumer wants more messages from this buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

struct Fragmented {
    opcode: u8,
    data: Vec<u8>,
    /// Prefix of `data` already known to be valid UTF-8 (text only).
    utf8_valid: usize,
}

/// Turns bytes into messages. Holds state only between the fragments of one message.
pub struct Decoder {
    role: Role,
    max_message: usize,
    frag: Option<Box<Fragmented>>,
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

impl Decoder {
    pub fn new(role: Role, max_message: usize) -> Decoder {
        Decoder {
            role,
            max_message,
            frag: None,
        }
    }

    /// True while a fragmented message is being assembled.
    pub fn mid_message(&self) -> bool {
        self.frag.is_some()
    }

    /// Bytes held for a fragmented message being assembled.
    pub fn held(&self) -> usize {
        self.frag.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// Decodes every complete frame at the start of `buf` (unmasking in place)
    /// and hands each to `on_message`: a complete message, or
    /// [`Message::Fragment`] for a frame that completes none. Returns how many bytes
    /// were consumed; the rest is an incomplete frame to be retried with more
    /// data. An `Err` is the close code the connection must fail with.
    pub fn decode<F>(&mut self, buf: &mut [u8], mut on_message: F) -> Result<usize, CloseCode>
    where
        F: FnMut(Message<'_>) -> Flow,
    {
        let mut pos = 0;
        loop {
            let Some(h) = self.parse_header(&buf[pos..])? else {
                return Ok(pos);
            };
            let total = h.header_len + h.payload_len;
            if buf.len() - pos < total {
                return Ok(pos);
            }
            let payload = &mut buf[pos + h.header_len..pos + total];
            if let Some(mask) = h.mask {
                apply_mask(payload, mask);
            }
            pos += total;
            if self.on_frame(&h, payload, &mut on_message)? == Flow::Stop {
                return Ok(pos);
            }
        }
    }

    /// Smallest number of bytes that could complete the frame at the start of
    /// `buf` (used to size reads); at least 1.
    pub fn needed(&self, buf: &[u8]) -> usize {
        match self.parse_header(buf) {
            Ok(Some(h)) => (h.header_len + h.payload_len)
                .saturating_sub(buf.len())
                .max(1),
            _ => 1,
        }
    }

    fn parse_header(&self, b: &[u8]) -> Result<Option<Header>, CloseCode> {
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            // RSV1-3: no extension was negotiated (permessage-deflate stays off).
            return Err(CloseCode::ProtocolError);
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) | (Role::Client, true) => return Err(CloseCode::ProtocolError),
            _ => {}
        }
        let is_control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(CloseCode::ProtocolError),
        }
        let len7 = (b[1] & 0x7F) as usize;
        if is_control && (!fin || len7 > 125) {
            return Err(CloseCode::ProtocolError);
        }
        let (payload_len, mut header_len) = match len7 {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(a);
                if n >> 63 != 0 {
                    return Err(CloseCode::ProtocolError);
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        if payload_len > self.max_message as u64 {
            return Err(CloseCode::MessageTooBig);
        }
        let mask = if masked {
            if b.len() < header_len + 4 {
                return Ok(None);
            }
            let m = [
                b[header_len],
                b[header_len + 1],
                b[header_len + 2],
                b[header_len + 3],
            ];
            header_len += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len,
            payload_len: payload_len as usize,
        }))
    }

    fn on_frame<F>(
        &mut self,
        h: &Header,
        payload: &[u8],
        on_message: &mut F,
    ) -> Result<Flow, CloseCode>
    where
        F: FnMut(Message<'_>) -> Flow,
    {
        match h.opcode {
            OP_PING => Ok(on_message(Message::Ping(payload))),
            OP_PONG => Ok(on_message(Message::Pong(payload))),
            OP_CLOSE => Ok(on_message(Message::Close(parse_close(payload)?))),
            OP_TEXT | OP_BINARY => {
                if self.frag.is_some() {
                    // A new data message may not start inside a fragmented one.
                    return Err(CloseCode::ProtocolError);
                }
                if h.fin {
                    return emit(h.opcode, payload, on_message);
                }
                let mut f = Box::new(Fragmented {
                    opcode: h.opcode,
                    data: Vec::with_capacity(payload.len()),
                    utf8_valid: 0,
                });
                f.data.extend_from_slice(payload);
                if h.opcode == OP_TEXT {
                    check_utf8_prefix(&mut f)?;
                }
                self.frag = Some(f);
                Ok(on_message(Message::Fragment))
            }
            OP_CONTINUATION => {
                let Some(f) = self.frag.as_mut() else {
                    return Err(CloseCode::ProtocolError);
                };
                if f.data.len() + payload.len() > self.max_message {
                    return Err(CloseCode::MessageTooBig);
                }
                f.data.extend_from_slice(payload);
                if f.opcode == OP_TEXT {
                    check_utf8_prefix(f)?;
                }
                if !h.fin {
                    return Ok(on_message(Message::Fragment));
                }
                let f = self.frag.take().expect("checked above");
                emit(f.opcode, &f.data, on_message)
            }
            _ => Err(CloseCode::ProtocolError),
        }
    }
}

fn emit<F>(opcode: u8, payload: &[u8], on_message: &mut F) -> Result<Flow, CloseCode>
where
    F: FnMut(Message<'_>) -> Flow,
{
    if opcode == OP_TEXT {
        let text = std::str::from_utf8(payload).map_err(|_| CloseCode::InvalidPayload)?;
        Ok(on_message(Message::Text(text)))
    } else {
        Ok(on_message(Message::Binary(payload)))
    }
}

/// Validates the new part of a fragmented text message, allowing a code point
/// to be cut at the end (it may complete in the next fragment).
fn check_utf8_prefix(f: &mut Fragmented) -> Result<(), CloseCode> {
    match std::str::from_utf8(&f.data[f.utf8_valid..]) {
        Ok(_) => {
            f.utf8_valid = f.data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() => {
            f.utf8_valid += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(CloseCode::InvalidPayload),
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, CloseCode> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(CloseCode::ProtocolError),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(CloseCode::ProtocolError);
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| CloseCode::InvalidPayload)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Codes a peer may send in a close frame (RFC 6455 §7.4, IANA registry).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Unmasks (or masks) in place. Works a word at a time: this runs on every
/// client frame.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let mask_u32 = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ mask_u32;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends one frame. `mask` is required from clients and forbidden from servers.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], m);
        }
        None => out.extend_from_slice(payload),
    }
}

/// A complete server text frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    encode_frame(&mut out, OP_TEXT, text.as_bytes(), None);
    out
}

/// A complete server close frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Control frames carry at most 125 bytes.
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    let mut out = Vec::with_capacity(payload.len() + 2);
    encode_frame(&mut out, OP_CLOSE, &payload, None);
    out
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(client_key: &[u8]) -> String {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(client_key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, Some([1, 2, 3, 4]));
        if !fin {
            out[0] &= 0x7F;
        }
        out
    }

    fn decode_all(d: &mut Decoder, mut buf: Vec<u8>) -> (Result<usize, CloseCode>, Vec<String>) {
        let mut seen = Vec::new();
        let r = d.decode(&mut buf, |m| {
            seen.push(format!("{m:?}"));
            Flow::Continue
        });
        (r, seen)
    }

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_text_round_trip_and_partial_frames() {
        let frame = client_frame(OP_TEXT, true, "héllo".as_bytes());
        let mut d = Decoder::new(Role::Server, 1024);
        for cut in 0..frame.len() {
            let mut part = frame[..cut].to_vec();
            assert_eq!(d.decode(&mut part, |_| Flow::Continue), Ok(0), "cut {cut}");
        }
        let (r, seen) = decode_all(&mut d, frame.clone());
        assert_eq!(r, Ok(frame.len()));
        assert_eq!(seen, vec![r#"Text("héllo")"#]);
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"x", None);
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(decode_all(&mut d, out).0, Err(CloseCode::ProtocolError));
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut buf = client_frame(OP_TEXT, false, b"he");
        buf.extend(client_frame(OP_PING, true, b"p"));
        buf.extend(client_frame(OP_CONTINUATION, true, b"llo"));
        let mut d = Decoder::new(Role::Server, 1024);
        let (r, seen) = decode_all(&mut d, buf);
        assert!(r.is_ok());
        // Every frame is reported: the first fragment too.
        assert_eq!(seen, vec!["Fragment", "Ping([112])", r#"Text("hello")"#]);
        assert!(!d.mid_message());
    }

    #[test]
    fn fragmentation_errors() {
        let mut d = Decoder::new(Role::Server, 1024);
        let r = decode_all(&mut d, client_frame(OP_CONTINUATION, true, b"x")).0;
        assert_eq!(r, Err(CloseCode::ProtocolError));
        let mut d = Decoder::new(Role::Server, 1024);
        let mut buf = client_frame(OP_TEXT, false, b"a");
        buf.extend(client_frame(OP_TEXT, true, b"b"));
        assert_eq!(decode_all(&mut d, buf).0, Err(CloseCode::ProtocolError));
        let mut d = Decoder::new(Role::Server, 1024);
        let r = decode_all(&mut d, client_frame(OP_PING, false, b"x")).0;
        assert_eq!(r, Err(CloseCode::ProtocolError));
    }

    #[test]
    fn size_limits() {
        let mut d = Decoder::new(Role::Server, 10);
        let r = decode_all(&mut d, client_frame(OP_TEXT, true, &[b'a'; 11])).0;
        assert_eq!(r, Err(CloseCode::MessageTooBig));
        let mut d = Decoder::new(Role::Server, 10);
        let mut buf = client_frame(OP_TEXT, false, &[b'a'; 6]);
        buf.extend(client_frame(OP_CONTINUATION, true, &[b'a'; 6]));
        assert_eq!(decode_all(&mut d, buf).0, Err(CloseCode::MessageTooBig));
        let mut d = Decoder::new(Role::Server, 1000);
        let r = decode_all(&mut d, client_frame(OP_PING, true, &[0; 126])).0;
        assert_eq!(r, Err(CloseCode::ProtocolError));
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_fragments() {
        let mut d = Decoder::new(Role::Server, 1024);
        // 0xFF can never appear in UTF-8: fail on the first fragment already.
        let r = decode_all(&mut d, client_frame(OP_TEXT, false, &[b'a', 0xFF])).0;
        assert_eq!(r, Err(CloseCode::InvalidPayload));
        // A code point cut between fragments is fine.
        let mut d = Decoder::new(Role::Server, 1024);
        let e = "é".as_bytes();
        let mut buf = client_frame(OP_TEXT, false, &e[..1]);
        buf.extend(client_frame(OP_CONTINUATION, true, &e[1..]));
        let (r, seen) = decode_all(&mut d, buf);
        assert!(r.is_ok());
        assert_eq!(seen, vec!["Fragment", r#"Text("é")"#]);
    }

    #[test]
    fn close_payloads() {
        let mut d = Decoder::new(Role::Server, 1024);
        let (r, seen) = decode_all(
            &mut d,
            client_frame(OP_CLOSE, true, &[0x03, 0xE8, b'o', b'k']),
        );
        assert!(r.is_ok());
        assert_eq!(seen, vec![r#"Close(Some((1000, "ok")))"#]);
        for bad in [&[0x03][..], &[0x03, 0xED], &[0, 0], &[0x03, 0xE8, 0xFF]] {
            let mut d = Decoder::new(Role::Server, 1024);
            assert!(
                decode_all(&mut d, client_frame(OP_CLOSE, true, bad))
                    .0
                    .is_err()
            );
        }
    }

    #[test]
    fn reserved_bits_and_opcodes() {
        let mut f = client_frame(OP_TEXT, true, b"x");
        f[0] |= 0x40;
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(decode_all(&mut d, f).0, Err(CloseCode::ProtocolError));
        let mut d = Decoder::new(Role::Server, 1024);
        assert_eq!(
            decode_all(&mut d, client_frame(0x3, true, b"x")).0,
            Err(CloseCode::ProtocolError)
        );
    }

    #[test]
    fn mask_matches_bytewise() {
        let mut a: Vec<u8> = (0..37).collect();
        let b = a.clone();
        apply_mask(&mut a, [9, 8, 7, 6]);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(*x, y ^ [9, 8, 7, 6][i % 4]);
        }
    }
}
