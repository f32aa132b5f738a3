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
        // ONNX Runtime from the onnxruntime wheel installed beside torch (scripts/setup.sh):
        // its path is baked in like libtorch's rpath; TL_ONNXRUNTIME overrides it at run time.
        let site_packages = std::path::Path::new(&lib_dir)
            .parent()
            .and_then(|p| p.parent());
        if let Some(ort) =
            site_packages.and_then(|s| newest(&s.join("onnxruntime/capi"), "libonnxruntime.so"))
        {
            println!("cargo:rustc-env=TL_ONNXRUNTIME_LIB={}", ort.display());
        }
        // OpenVINO's C library from the openvino wheel, and Pillow's libjpeg-turbo (bundled in
        // its wheel, which torchvision installs): found the same way; TL_OPENVINO and
        // TL_LIBJPEG override them at run time.
        if let Some(ov) =
            site_packages.and_then(|s| newest(&s.join("openvino/libs"), "libopenvino_c.so"))
        {
            println!("cargo:rustc-env=TL_OPENVINO_LIB={}", ov.display());
        }
        if let Some(jpeg) = site_packages.and_then(|s| newest(&s.join("pillow.libs"), "libjpeg-")) {
            println!("cargo:rustc-env=TL_LIBJPEG_LIB={}", jpeg.display());
        }
        // The Python of that environment (VENV/lib/pythonX.Y/site-packages/torch/lib →
        // VENV/bin/python): the default for `tl export`, which runs PyTorch's exporter.
        let python = std::path::Path::new(&lib_dir)
            .ancestors()
            .nth(5)
            .map(|venv| venv.join("bin").join("python"));
        if let Some(python) = python.filter(|p| p.is_file()) {
            println!("cargo:rustc-env=TL_BUILD_PYTHON={}", python.display());
        }
    }
}

/// The last (by name) file in `dir` whose name starts with `prefix`.
fn newest(dir: &std::path::Path, prefix: &str) -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.contains(".so"))
        })
        .collect();
    found.sort();
    found.pop()
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
