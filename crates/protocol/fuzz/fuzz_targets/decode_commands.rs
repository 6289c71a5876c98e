#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{decode_commands, split_value, Bytes, CommandKind};

fuzz_target!(|input: &[u8]| {
    let message = Bytes::copy_from_slice(input);
    let mut n = 0;
    for result in decode_commands(&message) {
        n += 1;
        assert!(n <= input.len(), "more results than bytes");
        if let Ok(cmd) = result {
            if let CommandKind::Pub { data, .. } | CommandKind::Send { data, .. } = cmd.kind {
                // `data` is exactly one well-formed value, a slice of the input.
                let (one, rest) = split_value(&data).expect("data is a value");
                assert!(rest.is_empty());
                assert_eq!(one.len(), data.len());
            }
        }
    }
    if let Ok((one, rest)) = split_value(input) {
        assert_eq!(one.len() + rest.len(), input.len());
    }
});
