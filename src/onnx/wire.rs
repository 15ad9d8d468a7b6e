//! The protobuf wire format, just enough of it to write ONNX files and to edit them field-wise.
//!
//! Protobuf messages are sequences of (field number, value) pairs, and a field's encoded bytes
//! can be copied verbatim into another message. That is how `export` grafts heads onto a
//! backbone without understanding (or rewriting) the backbone's 22 M weights.

use anyhow::{bail, Result};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// One decoded value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// One field of a message: its number, its value and its complete encoding (key included).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    pub raw: &'a [u8],
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field (string, bytes or sub-message).
    pub fn bytes(&self) -> Result<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            other => bail!("protobuf field {} is {other:?}, expected a length-delimited value", self.number),
        }
    }

    pub fn string(&self) -> Result<String> {
        Ok(std::str::from_utf8(self.bytes()?)?.to_string())
    }

    pub fn varint(&self) -> Result<u64> {
        match self.value {
            Value::Varint(v) => Ok(v),
            other => bail!("protobuf field {} is {other:?}, expected a varint", self.number),
        }
    }
}

/// Splits a message into its top-level fields, in order.
pub fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3)?;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(read_varint(buf, &mut pos)?),
            FIXED64 => Value::Fixed64(u64::from_le_bytes(take(buf, &mut pos, 8)?.try_into()?)),
            LEN => {
                let len = usize::try_from(read_varint(buf, &mut pos)?)?;
                Value::Bytes(take(buf, &mut pos, len)?)
            }
            FIXED32 => Value::Fixed32(u32::from_le_bytes(take(buf, &mut pos, 4)?.try_into()?)),
            other => bail!("protobuf wire type {other} at byte {start} is not supported (damaged file?)"),
        };
        out.push(Field { number, value, raw: &buf[start..pos] });
    }
    Ok(out)
}

/// The values of a packed repeated varint field (e.g. TensorProto.dims as written by some tools).
pub fn packed_varints(buf: &[u8]) -> Result<Vec<u64>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        out.push(read_varint(buf, &mut pos)?);
    }
    Ok(out)
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8]> {
    let end = pos.checked_add(len).filter(|&e| e <= buf.len());
    let Some(end) = end else { bail!("protobuf value of {len} bytes at byte {pos} runs past the end ({} bytes)", buf.len()) };
    let slice = &buf[*pos..end];
    *pos = end;
    Ok(slice)
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = buf.get(*pos) else { bail!("protobuf varint runs past the end at byte {pos}") };
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("protobuf varint longer than 10 bytes at byte {pos}")
}

/// Builds one message. Fields are written in call order.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn key(&mut self, number: u32, wire: u8) {
        push_varint(&mut self.buf, (u64::from(number) << 3) | u64::from(wire));
    }

    /// int32/int64/enum (negative numbers take 10 bytes, as protobuf requires).
    pub fn int(mut self, number: u32, value: i64) -> Self {
        self.key(number, VARINT);
        push_varint(&mut self.buf, value as u64);
        self
    }

    pub fn float(mut self, number: u32, value: f32) -> Self {
        self.key(number, FIXED32);
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn bytes(mut self, number: u32, value: &[u8]) -> Self {
        self.key(number, LEN);
        push_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(value);
        self
    }

    pub fn string(self, number: u32, value: &str) -> Self {
        self.bytes(number, value.as_bytes())
    }

    /// Copies already-encoded fields (e.g. [`Field::raw`]) unchanged.
    pub fn raw(mut self, encoded: &[u8]) -> Self {
        self.buf.extend_from_slice(encoded);
        self
    }
}

fn push_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let inner = Encoder::new().string(1, "x").finish();
        let msg = Encoder::new().int(1, 300).int(2, -1).float(3, 1.5).bytes(4, &inner).string(5, "héllo").finish();
        let f = fields(&msg).unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f[0].varint().unwrap(), 300);
        assert_eq!(f[1].varint().unwrap() as i64, -1);
        assert_eq!(f[2].value, Value::Fixed32(1.5f32.to_bits()));
        assert_eq!(fields(f[3].bytes().unwrap()).unwrap()[0].string().unwrap(), "x");
        assert_eq!(f[4].string().unwrap(), "héllo");
        let copied: Vec<u8> = f.iter().flat_map(|x| x.raw.iter().copied()).collect();
        assert_eq!(copied, msg);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let msg = Encoder::new().string(1, "abcdef").finish();
        assert!(fields(&msg[..msg.len() - 1]).is_err());
    }
}
