//! JPEG decoding with the libjpeg-turbo that Pillow ships in its wheel, called the way
//! Pillow calls it (default DCT method `JDCT_ISLOW`, fancy upsampling, Adobe-inverted CMYK
//! converted by Pillow's formula), so that the pixels `tl` feeds the network are the ones
//! torchvision's `ImageFolder` + eval transform produce, bit for bit (tests/parity.rs). The
//! library is opened at run time (`$TL_LIBJPEG`, else the `pillow.libs/libjpeg-*.so` found
//! beside torch when `tl` was built): nothing to compile, and the same library as Pillow by
//! construction. Where it is missing, the `image` crate decodes (within 2/255 of Pillow on
//! the photos measured; BENCHMARKS.md §13 found libjpeg-turbo 12 % faster too).
//!
//! `draft` scales in the DCT by 1/2, 1/4 or 1/8, exactly as `Image.draft('RGB', (s, s))`:
//! the largest factor that keeps both sides at least `s`. At 1/8 (photos at least 8x the
//! side: 4000x3000 for 256) [`super::jpeg_eighth`] decodes instead where it can, to the same
//! bytes in 0.6-0.8 of libjpeg's time (BENCHMARKS.md §22c).
//!
//! The libjpeg API is the v6.2 ABI (`libjpeg.so.62`); the two structs it needs are written
//! out below up to the last field read, padded to the library's size and checked at
//! compile time. libjpeg reports errors through a callback that must not return: it
//! unwinds (`extern "C-unwind"`, `resume_unwind` so no panic message is printed) through
//! the library's frames, which carry unwind tables (.eh_frame), back to `catch_unwind`.
use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

const BUILT_WITH: Option<&str> = option_env!("TL_LIBJPEG_LIB");

/// The most memory one decode may allocate (a 100-megapixel 16-bit RGBA image).
pub const MAX_DECODE_BYTES: u64 = 800 << 20;
const JPEG_LIB_VERSION: c_int = 62;
const JCS_GRAYSCALE: c_int = 1;
const JCS_RGB: c_int = 2;
const JCS_CMYK: c_int = 4;
const JCS_YCCK: c_int = 5;
const JMSG_LENGTH_MAX: usize = 200;

#[repr(C)]
struct ErrorMgr {
    error_exit: Option<unsafe extern "C-unwind" fn(*mut Decompress)>,
    emit_message: Option<unsafe extern "C-unwind" fn(*mut Decompress, c_int)>,
    output_message: Option<unsafe extern "C" fn(*mut Decompress)>,
    format_message: Option<unsafe extern "C" fn(*mut Decompress, *mut c_char)>,
    reset_error_mgr: Option<unsafe extern "C" fn(*mut Decompress)>,
    msg_code: c_int,
    msg_parm: [c_int; 20],
    trace_level: c_int,
    num_warnings: c_long,
    jpeg_message_table: *const *const c_char,
    last_jpeg_message: c_int,
    addon_message_table: *const *const c_char,
    first_addon_message: c_int,
    last_addon_message: c_int,
}

/// `struct jpeg_decompress_struct` of libjpeg v6.2, fields up to `output_scanline`.
#[repr(C)]
struct Decompress {
    err: *mut ErrorMgr,
    mem: *mut c_void,
    progress: *mut c_void,
    client_data: *mut c_void,
    is_decompressor: c_int,
    global_state: c_int,
    src: *mut c_void,
    image_width: c_uint,
    image_height: c_uint,
    num_components: c_int,
    jpeg_color_space: c_int,
    out_color_space: c_int,
    scale_num: c_uint,
    scale_denom: c_uint,
    output_gamma: f64,
    buffered_image: c_int,
    raw_data_out: c_int,
    dct_method: c_int,
    do_fancy_upsampling: c_int,
    do_block_smoothing: c_int,
    quantize_colors: c_int,
    dither_mode: c_int,
    two_pass_quantize: c_int,
    desired_number_of_colors: c_int,
    enable_1pass_quant: c_int,
    enable_external_quant: c_int,
    enable_2pass_quant: c_int,
    output_width: c_uint,
    output_height: c_uint,
    out_color_components: c_int,
    output_components: c_int,
    rec_outbuf_height: c_int,
    actual_number_of_colors: c_int,
    colormap: *mut c_void,
    output_scanline: c_uint,
    rest: [u8; 632 - 172],
}

// The layout of libjpeg-turbo's jpeglib.h (JPEG_LIB_VERSION 62) on 64-bit Linux.
const _: () = {
    assert!(std::mem::size_of::<ErrorMgr>() == 168);
    assert!(std::mem::offset_of!(ErrorMgr, msg_code) == 40);
    assert!(std::mem::offset_of!(ErrorMgr, num_warnings) == 128);
    assert!(std::mem::size_of::<Decompress>() == 632);
    assert!(std::mem::offset_of!(Decompress, src) == 40);
    assert!(std::mem::offset_of!(Decompress, output_gamma) == 80);
    assert!(std::mem::offset_of!(Decompress, output_width) == 136);
    assert!(std::mem::offset_of!(Decompress, output_scanline) == 168);
};

type Cinfo = *mut Decompress;

/// The library's entry points.
struct Api {
    std_error: unsafe extern "C" fn(*mut ErrorMgr) -> *mut ErrorMgr,
    create: unsafe extern "C-unwind" fn(Cinfo, c_int, usize),
    mem_src: unsafe extern "C-unwind" fn(Cinfo, *const u8, c_ulong),
    read_header: unsafe extern "C-unwind" fn(Cinfo, c_int) -> c_int,
    start: unsafe extern "C-unwind" fn(Cinfo) -> c_int,
    read_scanlines: unsafe extern "C-unwind" fn(Cinfo, *mut *mut u8, c_uint) -> c_uint,
    finish: unsafe extern "C-unwind" fn(Cinfo) -> c_int,
    destroy: unsafe extern "C" fn(Cinfo),
    path: PathBuf,
    _lib: libloading::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// Where the library is looked for: `$TL_LIBJPEG` (the process settings), else the
/// build-time path.
pub fn library_path() -> Option<PathBuf> {
    crate::runtime::process_settings()
        .libjpeg
        .clone()
        .or_else(|| BUILT_WITH.map(PathBuf::from))
}

fn api() -> Result<&'static Api, &'static str> {
    API.get_or_init(open).as_ref().map_err(|e| e.as_str())
}

fn open() -> Result<Api, String> {
    let path = library_path().ok_or("no libjpeg known (set TL_LIBJPEG)")?;
    // SAFETY: a libjpeg is a plain C library without initialisers that matter; each symbol
    // is given the type jpeglib.h declares for the v6.2 ABI.
    unsafe {
        let lib =
            libloading::Library::new(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        macro_rules! sym {
            ($name:literal) => {
                *lib.get($name)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            };
        }
        Ok(Api {
            std_error: sym!(b"jpeg_std_error\0"),
            create: sym!(b"jpeg_CreateDecompress\0"),
            mem_src: sym!(b"jpeg_mem_src\0"),
            read_header: sym!(b"jpeg_read_header\0"),
            start: sym!(b"jpeg_start_decompress\0"),
            read_scanlines: sym!(b"jpeg_read_scanlines\0"),
            finish: sym!(b"jpeg_finish_decompress\0"),
            destroy: sym!(b"jpeg_destroy_decompress\0"),
            path,
            _lib: lib,
        })
    }
}

/// One line for `tl doctor`: which library decodes JPEGs, or why the fallback does.
pub fn describe() -> String {
    let settings = crate::runtime::process_settings();
    let mode = settings.decode.label();
    let eighth = match settings.decode {
        crate::runtime::DecodeMode::Draft if !settings.libjpeg_only => {
            "; 1/8 by tl's DC-path decoder, the same pixels"
        }
        _ => "",
    };
    match api() {
        Ok(api) => format!(
            "libjpeg-turbo from {} (decode {mode}{eighth})",
            api.path.display()
        ),
        Err(why) => format!("the image crate ({why}; decode {mode})"),
    }
}

/// The decoder's name in the preprocessing fingerprint: features from one decoder are not
/// reused for another.
pub fn fingerprint_tag() -> &'static str {
    if api().is_ok() {
        "jpeg=libjpeg-turbo"
    } else {
        "jpeg=image-rs"
    }
}

/// Whether Pillow's libjpeg is in use.
pub fn available() -> bool {
    api().is_ok()
}

/// The unwinding payload of `error_exit`.
struct Failed(String);

/// Set by a "premature end of JPEG file" warning: Pillow refuses such files.
struct Warnings {
    truncated: bool,
}

unsafe fn message(cinfo: Cinfo) -> String {
    let mut buf = [0 as c_char; JMSG_LENGTH_MAX];
    if let Some(format) = (*(*cinfo).err).format_message {
        format(cinfo, buf.as_mut_ptr());
    }
    std::ffi::CStr::from_ptr(buf.as_ptr())
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: Cinfo) {
    let text = message(cinfo);
    std::panic::resume_unwind(Box::new(Failed(text)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: Cinfo, level: c_int) {
    if level < 0 {
        let text = message(cinfo);
        if text.contains("Premature end of JPEG file") {
            let warnings = (*cinfo).client_data as *mut Warnings;
            (*warnings).truncated = true;
        }
    }
}

/// The largest factor of 8, 4, 2, 1 that keeps both sides at least `target`
/// (`Image.draft`'s rule).
pub fn draft_scale(width: u32, height: u32, target: u32) -> u32 {
    let fits = (width / target.max(1)).min(height / target.max(1));
    [8, 4, 2, 1].into_iter().find(|&s| fits >= s).unwrap_or(1)
}

/// Decode a JPEG to RGB as Pillow does (`draft`: `Some(side)` for `Image.draft('RGB',
/// (side, side))`). `None`: the library is not available. `Some(Err)`: it refused the
/// file (the message is libjpeg's).
pub fn decode(bytes: &[u8], draft: Option<u32>) -> Option<Result<image::RgbImage, String>> {
    let api = api().ok()?;
    let eighth_allowed = !crate::runtime::process_settings().libjpeg_only;
    if let Some(side) = draft.filter(|_| eighth_allowed) {
        // Photos at least 8x the side: the DC-path decoder, libjpeg's pixels in less time.
        let eighth = super::jpeg_eighth::frame_size(bytes)
            .is_some_and(|(w, h)| draft_scale(w, h, side) == 8 && pixels_ok(w, h));
        if let Some(img) = eighth.then(|| super::jpeg_eighth::decode(bytes)).flatten() {
            return Some(Ok(img));
        }
    }
    let scale = |w, h| draft.map_or(1, |side| draft_scale(w, h, side));
    decode_with(api, bytes, &scale)
}

/// libjpeg at 1/`denom` (1, 2, 4 or 8), whatever the image's size; for tests and
/// benchmarks of [`super::jpeg_eighth`].
pub fn decode_libjpeg_scaled(bytes: &[u8], denom: u32) -> Option<Result<image::RgbImage, String>> {
    decode_with(api().ok()?, bytes, &|_, _| denom)
}

fn pixels_ok(width: u32, height: u32) -> bool {
    let pixels = (width as u64) * (height as u64);
    pixels > 0 && pixels * 4 <= MAX_DECODE_BYTES
}

fn decode_with(
    api: &Api,
    bytes: &[u8],
    scale: &dyn Fn(u32, u32) -> u32,
) -> Option<Result<image::RgbImage, String>> {
    // SAFETY: an all-zero struct is what jpeg_CreateDecompress expects to fill (it zeroes
    // it itself); every pointer handed over outlives the calls.
    let mut err: ErrorMgr = unsafe { std::mem::zeroed() };
    let mut cinfo: Box<Decompress> = Box::new(unsafe { std::mem::zeroed() });
    let mut warnings = Warnings { truncated: false };
    let cinfo_ptr: Cinfo = &mut *cinfo;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        (api.std_error)(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        (*cinfo_ptr).err = &mut err;
        (api.create)(
            cinfo_ptr,
            JPEG_LIB_VERSION,
            std::mem::size_of::<Decompress>(),
        );
        (*cinfo_ptr).client_data = (&mut warnings as *mut Warnings).cast();
        read(api, cinfo_ptr, bytes, scale)
    }));
    // SAFETY: destroy frees the library's pools whatever state the object is in.
    unsafe { (api.destroy)(cinfo_ptr) };
    Some(match result {
        Ok(_) if warnings.truncated => Err("premature end of JPEG file".into()),
        Ok(out) => out,
        Err(payload) => Err(match payload.downcast::<Failed>() {
            Ok(failed) => failed.0,
            Err(_) => "the decoder failed".into(),
        }),
    })
}

/// Header, settings, scanlines; then the conversion Pillow's `convert('RGB')` makes. The
/// struct is only touched through the raw pointer: the library writes it during each call.
unsafe fn read(
    api: &Api,
    cinfo: Cinfo,
    bytes: &[u8],
    scale: &dyn Fn(u32, u32) -> u32,
) -> Result<image::RgbImage, String> {
    (api.mem_src)(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
    (api.read_header)(cinfo, 1);
    let (components, space) = ((*cinfo).num_components, (*cinfo).jpeg_color_space);
    let cmyk = matches!(space, JCS_CMYK | JCS_YCCK);
    (*cinfo).out_color_space = if cmyk { JCS_CMYK } else { JCS_RGB };
    if !cmyk && !matches!(components, 1 | 3) {
        return Err(format!("cannot handle {components}-layer images"));
    }
    if space == JCS_GRAYSCALE && components != 1 {
        return Err("grayscale image with more than one component".into());
    }
    let (width, height) = ((*cinfo).image_width, (*cinfo).image_height);
    if !pixels_ok(width, height) {
        return Err(format!("{width}x{height} pixels is empty or too large"));
    }
    let denom = scale(width, height);
    if denom > 1 {
        (*cinfo).scale_num = 1;
        (*cinfo).scale_denom = denom;
    }
    (api.start)(cinfo);
    let (w, h, channels) = (
        (*cinfo).output_width as usize,
        (*cinfo).output_height as usize,
        (*cinfo).output_components as usize,
    );
    let mut raw = vec![0u8; w * h * channels];
    let mut rows: Vec<*mut u8> = raw
        .chunks_exact_mut((w * channels).max(1))
        .map(|r| r.as_mut_ptr())
        .collect();
    let mut done = 0;
    while done < h {
        let left = (h - done) as c_uint;
        if (api.read_scanlines)(cinfo, rows[done..].as_mut_ptr(), left) == 0 {
            return Err("no scanline read".into());
        }
        done = (*cinfo).output_scanline as usize;
    }
    (api.finish)(cinfo);
    let rgb = if channels == 4 {
        cmyk_to_rgb(&raw)
    } else {
        raw
    };
    image::RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| "bad size".into())
}

/// Pillow's "CMYK;I" unpacking (Adobe's inverted CMYK) followed by its `cmyk2rgb`.
fn cmyk_to_rgb(raw: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(raw.len() / 4 * 3);
    for px in raw.chunks_exact(4) {
        let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| 255 - v as i32);
        let nk = 255 - k;
        for v in [c, m, y] {
            out.push((nk - muldiv255(v, nk)).clamp(0, 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::draft_scale;

    #[test]
    fn draft_scale_follows_pillows_rule() {
        for (w, h, side, want) in [
            (4000, 3000, 256, 8),
            (1024, 768, 256, 2),
            (1024, 1024, 256, 4),
            (511, 2000, 256, 1),
            (512, 512, 256, 2),
            (2047, 4000, 256, 4),
            (200, 200, 256, 1),
            (100_000, 300, 256, 1),
        ] {
            assert_eq!(draft_scale(w, h, side), want, "{w}x{h} for {side}");
        }
    }
}
