//! PyTorch checkpoint reader (`digitlab_finetune::pth`): zip archives, legacy
//! (pre-1.6) pickles, and the pickle interpreter behind both.
//!
//! Input: one mode byte, then
//! - mode even: a whole `.pth` file (zip or legacy), as a user would download it;
//! - mode odd: `u32` LE length, a `data.pkl` pickle, then the bytes of storage `0`,
//!   which the harness wraps into a valid zip archive. Zip entries carry CRCs, so
//!   mutations of a real archive's pickle almost never reach the interpreter; this
//!   mode lets them.
#![no_main]
use candle_core::DType;
use digitlab_finetune::pth::{read_pth_from, PthOptions};
use digitlab_fuzz::{split_two, AllocCap};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Write};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let (pickle, storage) = split_two(rest);
        wrap(pickle, storage)
    };
    // The cap is set after the harness's own allocations.
    let _cap = AllocCap::for_input(data.len());
    let path = Path::new("fuzz.pth");
    for key in [None, Some("state_dict")] {
        let options = PthOptions {
            key: key.map(String::from),
        };
        if let Ok(tensors) = read_pth_from(Cursor::new(&file[..]), path, &options) {
            for (name, t) in &tensors {
                assert!(!name.is_empty());
                // Every tensor is fully materialised and readable.
                let n: usize = t.dims().iter().product();
                assert_eq!(t.elem_count(), n);
                if t.dtype() == DType::F32 && n > 0 {
                    let _ = t.flatten_all().and_then(|f| f.get(0));
                }
            }
        }
    }
});

/// A stored (uncompressed) zip archive laid out like `torch.save`'s.
fn wrap(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/data/0", storage),
    ] {
        w.start_file(name, opts).expect("in-memory zip");
        w.write_all(bytes).expect("in-memory zip");
    }
    w.finish().expect("in-memory zip").into_inner()
}
