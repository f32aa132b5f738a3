//! Makes the `tl` binary (and its tests) find libtorch at run time without LD_LIBRARY_PATH,
//! and keeps `libtorch_cuda` linked so that a CUDA-enabled libtorch sees the GPU.
fn main() {
    // torch-sys (links = "tch") exports the directory it linked against.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        // libtorch.so pulls in libtorch_cuda.so when present; without --no-as-needed the
        // linker drops it because no symbol of ours references it directly.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        let cuda = std::path::Path::new(&lib_dir).join("libtorch_cuda.so");
        if cuda.exists() {
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-env=TL_LIBTORCH_LIB={lib_dir}");
        if let Some(version) = libtorch_version(std::path::Path::new(&lib_dir)) {
            println!("cargo:rustc-env=TL_LIBTORCH_VERSION={version}");
        }
    }
}

/// PyTorch's `version.py` (a pip install) or libtorch's `build-version` file.
fn libtorch_version(lib_dir: &std::path::Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                return Some(
                    rest.trim_start_matches([' ', '=', ':'])
                        .split('=')
                        .next_back()?
                        .trim()
                        .trim_matches(['\'', '"'])
                        .to_string(),
                );
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}
