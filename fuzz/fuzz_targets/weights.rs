//! Arbitrary bytes as a safetensors file: parse, check, decode; nothing may panic.
//!
//! Both entry points are fuzzed: `from_bytes` (the whole file in memory) and
//! `read_from` (the streaming reader `cnnc run` and built binaries use), and
//! they must agree on whether the file is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = cnnc_runtime::weights::WeightFile::from_bytes(data);
    let streamed = cnnc_runtime::weights::WeightFile::read_from(data, Some(data.len() as u64));
    assert_eq!(whole.is_ok(), streamed.is_ok(), "{whole:?} vs {streamed:?}");
    let unsized_stream = cnnc_runtime::weights::WeightFile::read_from(data, None);
    assert_eq!(streamed.is_ok(), unsized_stream.is_ok());
    if let Ok(file) = whole {
        // Debug text, because NaN != NaN.
        assert_eq!(format!("Ok({file:?})"), format!("{unsized_stream:?}"));
        let _ = file.check_finite(true);
        for t in file.tensors.values() {
            let numel: usize = t.shape.iter().product();
            assert_eq!(numel, t.data.to_f64().len());
        }
        // What we read, we can write back and read again.
        if let Ok(bytes) = file.to_bytes() {
            let again = cnnc_runtime::weights::WeightFile::from_bytes(&bytes);
            assert!(again.is_ok(), "{again:?}");
        }
    }
});
