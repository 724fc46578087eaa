//! MATLAB level-5 `.mat` reader (compressed and uncompressed elements, both byte
//! orders) and the SVHN loader on top of it.
#![no_main]
use digitlab_data::mat::{list_mat_variables_from, read_mat_variables_from};
use digitlab_data::svhn::load_svhn_mat_from;
use digitlab_fuzz::AllocCap;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _cap = AllocCap::for_input(data.len());
    let src = Path::new("fuzz.mat");
    let _ = list_mat_variables_from(Cursor::new(data), src);
    if let Ok(vars) = read_mat_variables_from(Cursor::new(data), src, &["X", "y"]) {
        for v in &vars {
            assert_eq!(v.dims.iter().product::<usize>(), v.numel(), "{}", v.name);
            let _ = v.data.to_i64_vec();
        }
    }
    if let Ok(d) = load_svhn_mat_from(Cursor::new(data), src) {
        assert_eq!(d.images().len(), d.len() * 3 * 32 * 32);
    }
});
