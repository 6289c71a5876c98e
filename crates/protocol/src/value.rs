//! Walking MessagePack values without decoding them, so that a payload can be
//! carried as the exact bytes the client sent.

/// Deepest nesting of arrays and maps accepted in a command (the command map
/// itself is level 1). Bounds the work a hostile message can ask for.
pub const MAX_DEPTH: usize = 32;

/// Why bytes are not one well-formed MessagePack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("truncated MessagePack value")]
    Truncated,
    #[error("invalid MessagePack marker 0xc1")]
    InvalidMarker,
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Splits the first MessagePack value off `buf`: returns its length in bytes.
/// Never recurses; `depth` counts the levels already entered by the caller.
pub(crate) fn value_len(buf: &[u8], depth: usize) -> Result<usize, ValueError> {
    // Items still to read at each open level; the outermost is the value itself.
    let mut pending = [0u32; MAX_DEPTH + 1];
    let mut level = 0usize;
    pending[0] = 1;
    let mut pos = 0usize;
    loop {
        // `level` stays below MAX_DEPTH (checked before it goes up), so
        // `pending` always has the entry: TooDeep is never returned here.
        let left = loop {
            match pending.get_mut(level).ok_or(ValueError::TooDeep)? {
                0 if level == 0 => return Ok(pos),
                0 => level -= 1,
                left => break left,
            }
        };
        *left -= 1;
        let marker = *buf.get(pos).ok_or(ValueError::Truncated)?;
        pos += 1;
        let (skip, children): (usize, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc1 => return Err(ValueError::InvalidMarker),
            0xc4 | 0xd9 => (be(buf, pos, 1)? as usize + 1, 0),
            0xc5 | 0xda => (be(buf, pos, 2)? as usize + 2, 0),
            0xc6 | 0xdb => (be(buf, pos, 4)? as usize + 4, 0),
            0xc7 => (be(buf, pos, 1)? as usize + 2, 0),
            0xc8 => (be(buf, pos, 2)? as usize + 3, 0),
            0xc9 => (be(buf, pos, 4)? as usize + 5, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(buf, pos, 2)?),
            0xdd => (4, be(buf, pos, 4)?),
            0xde => (2, 2 * be(buf, pos, 2)?),
            0xdf => (4, 2 * be(buf, pos, 4)?),
        };
        pos = pos.checked_add(skip).ok_or(ValueError::Truncated)?;
        if pos > buf.len() {
            return Err(ValueError::Truncated);
        }
        if children > 0 {
            // Every child takes at least one byte: a count beyond what is
            // left is a truncated value, found here rather than by looping.
            if children > (buf.len() - pos) as u64 {
                return Err(ValueError::Truncated);
            }
            if depth + level + 1 >= MAX_DEPTH {
                return Err(ValueError::TooDeep);
            }
            level += 1;
            *pending.get_mut(level).ok_or(ValueError::TooDeep)? = children as u32;
        }
    }
}

fn be(buf: &[u8], pos: usize, n: usize) -> Result<u64, ValueError> {
    let bytes = buf.get(pos..pos + n).ok_or(ValueError::Truncated)?;
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Splits the first complete MessagePack value off `buf`, returning it and
/// the rest.
pub fn split_value(buf: &[u8]) -> Result<(&[u8], &[u8]), ValueError> {
    let n = value_len(buf, 0)?;
    Ok(buf.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    #[test]
    fn scalars_and_containers() {
        for v in [
            enc(&0u8),
            enc(&-1i8),
            enc(&u64::MAX),
            enc(&i64::MIN),
            enc(&1.5f64),
            enc(&"hello".repeat(100)),
            enc(&vec![1u32, 2, 3]),
            enc(&std::collections::BTreeMap::from([
                ("a", vec![1, 2]),
                ("b", vec![]),
            ])),
            vec![0xc0],
            vec![0xc4, 2, 9, 9],
            vec![0xd4, 1, 2],
            vec![0xc7, 1, 5, 0],
        ] {
            let mut two = v.clone();
            two.extend_from_slice(&v);
            let (first, rest) = split_value(&two).unwrap();
            assert_eq!(first, &v[..]);
            assert_eq!(rest, &v[..]);
        }
    }

    #[test]
    fn truncated_and_invalid() {
        assert_eq!(split_value(&[]), Err(ValueError::Truncated));
        assert_eq!(split_value(&[0xc1]), Err(ValueError::InvalidMarker));
        assert_eq!(split_value(&[0x92, 1]), Err(ValueError::Truncated));
        assert_eq!(
            split_value(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(ValueError::Truncated)
        );
        assert_eq!(
            split_value(&[0xdb, 0, 0, 0, 9, b'a']),
            Err(ValueError::Truncated)
        );
    }

    #[test]
    fn depth_is_bounded() {
        let ok = [vec![0x91; MAX_DEPTH - 1], vec![0x01]].concat();
        assert!(split_value(&ok).is_ok());
        let deep = [vec![0x91; MAX_DEPTH], vec![0x01]].concat();
        assert_eq!(split_value(&deep), Err(ValueError::TooDeep));
        let hostile = vec![0x91; 1 << 20];
        assert_eq!(split_value(&hostile), Err(ValueError::TooDeep));
    }
}
