//! Tests that need real MNIST run when DIGITLAB_DATA is set at build time and
//! are reported as ignored, with the reason, when it is not.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(has_digitlab_data)");
    println!("cargo:rustc-check-cfg=cfg(has_fashion_mnist)");
    println!("cargo:rerun-if-env-changed=DIGITLAB_DATA");
    if let Some(dir) = std::env::var_os("DIGITLAB_DATA").filter(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=has_digitlab_data");
        let fashion = std::path::Path::new(&dir).join("fashion-mnist");
        println!("cargo:rerun-if-changed={}", fashion.display());
        if fashion.is_dir() {
            println!("cargo:rustc-cfg=has_fashion_mnist");
        }
    }
}
