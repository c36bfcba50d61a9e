//! Small safe wrappers over the libav fields ffmpeg-next does not expose, and the
//! one place that opens inputs (so every open gets the same protocol whitelist).
//!
//! Every `unsafe` block here reads (or, for an encoder not yet opened, sets) plain
//! fields of structs owned by a live context, or calls libav with pointers it owns.

use crate::error::{EngineError, Result};
use crate::remote;
use ff::ffi;
use ffmpeg_next as ff;
use proto::profile::VideoCodec;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, Ordering};

/// True for inputs libav should fetch over HTTP (with range requests).
pub fn is_url(input: &str) -> bool {
    input.starts_with("http://") || input.starts_with("https://")
}

/// Demuxers Drake accepts: real audio and video containers. Leaving out playlist and
/// text demuxers (hls, concat, tty, bin...) keeps libav from following references
/// inside an upload or rendering a text file as "video".
pub const FORMAT_WHITELIST: &str =
    "mov,matroska,mpegts,avi,flv,mpeg,mpegvideo,m4v,h264,hevc,ivf,mxf,dv,asf,ogg,wav,w64,mp3,aac,flac,aiff,caf,amr,gif,yuv4mpegpipe";

/// Opens an input. Only `file` (for paths) or `http(s)` (for URLs) protocols are
/// allowed, so a crafted name such as `concat:` or a playlist pointing elsewhere
/// cannot make libav read files it was not given.
pub fn open_input(input: &str) -> Result<ff::format::context::Input> {
    open(input, |_| ())
}

/// Opens an input as [`open_input`] does, with what each stream's keyframe index
/// says (see [`KeyframeIndex`]), in stream order.
pub fn open_input_indexed(input: &str) -> Result<(ff::format::context::Input, Vec<Option<KeyframeIndex>>)> {
    let mut index = Vec::new();
    let ictx = open(input, |ctx| {
        // SAFETY: the context's header was read, so `streams` holds `nb_streams` live streams.
        index = unsafe { (0..ctx.nb_streams as usize).map(|i| keyframe_index(*ctx.streams.add(i), ctx.start_time)).collect() };
    })?;
    Ok((ictx, index))
}

/// The longest stretch between two keyframes of a stream, its last keyframe and
/// its end, in seconds on the output's timeline (which starts at 0): as the
/// container's header indexes them (an MP4's sample table, an AVI's index), read
/// before libav reads any packet, since it adds what it reads to the index and
/// that part would look like a whole index of a stream with one keyframe; or, for
/// a local file without an index, as the probe finds them reading it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyframeIndex {
    pub longest_gap: f64,
    pub last: f64,
    /// Where the stream ends, if the header says.
    pub end: Option<f64>,
}

impl KeyframeIndex {
    /// Adds a keyframe at `t` seconds to what `index` knows (the first makes it).
    pub fn add(index: &mut Option<KeyframeIndex>, t: f64) {
        *index = Some(match *index {
            Some(k) => KeyframeIndex { longest_gap: k.longest_gap.max(t - k.last), last: k.last.max(t), end: k.end },
            None => KeyframeIndex { longest_gap: 0.0, last: t, end: None },
        });
    }

    /// The longest stretch without a keyframe, the one after the last keyframe
    /// included, to the stream's end or else `source_end`.
    pub fn gap(&self, source_end: f64) -> f64 {
        self.longest_gap.max(self.end.unwrap_or(source_end) - self.last).max(0.0)
    }
}

/// A stream's [`KeyframeIndex`], `None` when its header indexes no keyframe of it.
/// MPEG-TS and FLV have no such index; Matroska reads its cues only when first
/// asked to seek, and a seek before libav knows the streams could read the whole
/// file, so a Matroska or WebM source has none here either (the probe reads a
/// local one through instead).
///
/// # Safety
/// `st` is a live stream of a context whose header was read; `start_time` is
/// that context's (`AV_NOPTS_VALUE` when unknown).
unsafe fn keyframe_index(st: *mut ffi::AVStream, start_time: i64) -> Option<KeyframeIndex> {
    // SAFETY: per the contract; libav returns each entry of the stream's index,
    // valid until the next call that takes the stream.
    unsafe {
        let time_base = f64::from(ff::Rational::from((*st).time_base));
        let start = if start_time != ffi::AV_NOPTS_VALUE { start_time as f64 / 1e6 } else { 0.0 };
        let (first, length) = ((*st).start_time, (*st).duration);
        let end = (first != ffi::AV_NOPTS_VALUE && length > 0).then(|| (first + length) as f64 * time_base - start);
        let mut index = None;
        for i in 0..ffi::avformat_index_get_entries_count(st) {
            let e = ffi::avformat_index_get_entry(st, i);
            if e.is_null() || (*e).flags() & ffi::AVINDEX_KEYFRAME == 0 || (*e).timestamp == ffi::AV_NOPTS_VALUE {
                continue;
            }
            KeyframeIndex::add(&mut index, (*e).timestamp as f64 * time_base - start);
        }
        index.map(|k| KeyframeIndex { end, ..k })
    }
}

/// Opens `input` with the whitelists, calls `header` once its header is read and
/// before anything reads its packets, then reads its streams' parameters. A URL
/// is read through [`remote::Reader`], which waits out a failing store.
fn open(input: &str, header: impl FnOnce(&ffi::AVFormatContext)) -> Result<ff::format::context::Input> {
    let mut opts = ff::Dictionary::new();
    opts.set("format_whitelist", FORMAT_WHITELIST);
    if input.contains('\0') {
        return Err(EngineError::bad(format!("{input}: a name with a NUL byte")));
    }
    let (target, mut remote) = if is_url(input) {
        // No demuxer on the whitelist opens another resource; were one to, it
        // could only fetch over HTTP.
        opts.set("protocol_whitelist", "http,https,tcp,tls");
        let reader = remote::Reader::open(input).map_err(|e| fetch_error(input, e))?;
        let failure = reader.failure();
        let io = ff::format::context::StreamIo::from_read_seek_with_capacity(reader, REMOTE_BUFFER)
            .map_err(|e| EngineError::internal("setting up the source's reads", e))?;
        (input.to_string(), Some((io, failure)))
    } else {
        let meta = std::fs::metadata(input).map_err(|e| EngineError::bad(format!("cannot read {input}: {e}")))?;
        if !meta.is_file() {
            return Err(EngineError::bad(format!("{input} is not a file")));
        }
        if meta.len() == 0 {
            return Err(EngineError::bad(format!("{input} is empty (0 bytes)")));
        }
        opts.set("protocol_whitelist", "file");
        (format!("file:{input}"), None)
    };
    let target = std::ffi::CString::new(target).expect("no NUL byte, checked above");
    // What `ff::format::input_with_dictionary` (or `input_from_stream`) does, with
    // `header` between its two steps.
    // SAFETY: `ps` starts null (libav allocates the context) or is a context
    // allocated here reading through `remote`'s I/O context, which outlives it:
    // on failure avformat_open_input frees the context but never a caller's I/O
    // context, and the returned `Input` owns both. The context's `opaque` (libav
    // never touches it) points at the reader's failure, which lives as long.
    unsafe {
        let mut ps = std::ptr::null_mut();
        if let Some((io, failure)) = &mut remote {
            ps = ffi::avformat_alloc_context();
            if ps.is_null() {
                return Err(EngineError::internal("allocating a format context", ff::Error::Other { errno: libc::ENOMEM }));
            }
            (*ps).pb = io.as_mut_ptr();
            (*ps).flags |= ffi::AVFMT_FLAG_CUSTOM_IO;
            (*ps).opaque = std::sync::Arc::as_ptr(failure) as *mut std::ffi::c_void;
        }
        let mut raw = opts.disown();
        let opened = ffi::avformat_open_input(&mut ps, target.as_ptr(), std::ptr::null(), &mut raw);
        ff::Dictionary::own(raw);
        // What the demuxer made of a store that stayed away is not the source's.
        let failed = |remote: &Option<(_, remote::Failure)>| {
            remote
                .as_ref()
                .and_then(|(_, failure)| failure.get())
                .map(|why| EngineError::unreachable(format!("cannot fetch {input}"), why.clone()))
        };
        if opened < 0 {
            return Err(failed(&remote).unwrap_or_else(|| open_error(input, ff::Error::from(opened))));
        }
        header(&*ps);
        let found = ffi::avformat_find_stream_info(ps, std::ptr::null_mut());
        let failure = failed(&remote);
        if found < 0 || failure.is_some() {
            ffi::avformat_close_input(&mut ps);
            return Err(failure.unwrap_or_else(|| open_error(input, ff::Error::from(found))));
        }
        Ok(match remote {
            Some((io, _)) => ff::format::context::Input::wrap_with_custom_io(ps, io),
            None => ff::format::context::Input::wrap(ps),
        })
    }
}

/// The read buffer of a source over HTTP: libav's own for a file.
const REMOTE_BUFFER: usize = 64 * 1024;

/// Why the reads of `ictx`'s source over HTTP failed for good, if they did:
/// whatever its demuxer made of that (an end of file, invalid data), what was
/// read is not the source, and the reader must fail as internal, to be retried.
pub fn read_failure(ictx: &ff::format::context::Input) -> Option<EngineError> {
    // SAFETY: `open` makes every input, and sets `opaque` only for a URL, to the
    // failure its reader shares, alive as long as the input.
    let why = unsafe {
        // The `OnceLock` inside the reader's `Arc`, as `Arc::as_ptr` gives it.
        let failure = (*ictx.as_ptr()).opaque as *const std::sync::OnceLock<String>;
        if failure.is_null() {
            return None;
        }
        (*failure).get().cloned()
    }?;
    Some(EngineError::unreachable("reading the source over HTTP", why))
}

/// Classifies a failure to reach a source over HTTP, after `remote::Reader` waited
/// out what it could: a 4xx answer is bad input (a wrong or deleted source),
/// anything else the store's trouble, retryable.
fn fetch_error(input: &str, e: ff::Error) -> EngineError {
    use ff::Error as E;
    match e {
        E::HttpNotFound | E::HttpForbidden | E::HttpUnauthorized | E::HttpBadRequest | E::HttpOther4xx => {
            EngineError::bad(format!("cannot fetch {input}: {e}"))
        }
        _ => EngineError::unreachable(format!("cannot fetch {input}"), e),
    }
}

/// Classifies a demuxer's failure to open an input: a file libav could read but
/// not understand is bad input. Over HTTP as from a file, since the reader gives
/// the demuxer the source's bytes or a failure of its own (checked first).
fn open_error(input: &str, e: ff::Error) -> EngineError {
    use ff::Error as E;
    match e {
        E::InvalidData => EngineError::bad("not a media file libav can read (unrecognised or corrupt container)"),
        // libav recognised a format the whitelist refuses: a photo, a subtitle file.
        E::Other { errno: libc::EINVAL }
            if !is_url(input)
                && let Some((name, long_name)) = sniff(input).filter(|(name, _)| !whitelisted(name)) =>
        {
            match name.strip_suffix("_pipe") {
                Some(image) => EngineError::bad(format!("a still image ({image}), not a video or audio file")),
                None if name == "image2" => EngineError::bad("a still image, not a video or audio file"),
                None => EngineError::bad(format!("a {long_name} file ({name}), not a video or audio container Drake reads")),
            }
        }
        other => EngineError::bad(format!("cannot open as media: {other}")),
    }
}

/// Whether a demuxer's name (a list, as `mov,mp4,m4a,...`) is on [`FORMAT_WHITELIST`].
fn whitelisted(name: &str) -> bool {
    name.split(',').any(|n| FORMAT_WHITELIST.split(',').any(|w| w == n))
}

/// The format libav recognises in the first bytes of a local file, whitelist or
/// not (`png_pipe`, `srt`, ...), and its long name, to say what a refused upload is.
fn sniff(path: &str) -> Option<(String, String)> {
    use std::io::Read;
    const PROBE_BYTES: usize = 4096;
    // libav reads up to AVPROBE_PADDING_SIZE zeroed bytes past the data.
    let mut buf = vec![0u8; PROBE_BYTES + ffi::AVPROBE_PADDING_SIZE as usize];
    let read = std::fs::File::open(path).ok()?.take(PROBE_BYTES as u64).read(&mut buf).ok()?;
    let name = std::ffi::CString::new(path).ok()?;
    let data = ffi::AVProbeData { filename: name.as_ptr(), buf: buf.as_mut_ptr(), buf_size: read as i32, mime_type: std::ptr::null() };
    // SAFETY: `data` points at a live name and a buffer padded as libav asks; the
    // format libav returns is static, and so is its name.
    unsafe {
        let format = ffi::av_probe_input_format(&data, 1);
        if format.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*format).name).to_string_lossy().into_owned();
        // A small build of libav leaves long names out.
        let long_name = (*format).long_name;
        let long_name = if long_name.is_null() { name.clone() } else { std::ffi::CStr::from_ptr(long_name).to_string_lossy().into_owned() };
        Some((name, long_name))
    }
}

/// The codec parameters of a stream, read directly.
pub fn params<'a>(stream: &'a ff::format::stream::Stream<'_>) -> &'a ffi::AVCodecParameters {
    // SAFETY: the parameters pointer lives as long as the stream (and its context).
    unsafe { &*(*stream.as_ptr()).codecpar }
}

pub fn codec_name(id: ffi::AVCodecID) -> String {
    // SAFETY: avcodec_get_name returns a static string for every id.
    unsafe { CStr::from_ptr(ffi::avcodec_get_name(id)).to_string_lossy().into_owned() }
}

pub fn pix_fmt_name(fmt: i32) -> String {
    // SAFETY: a descriptor's name is a static NUL-terminated string.
    pix_fmt_desc(fmt).map_or("unknown".into(), |d| unsafe { CStr::from_ptr(d.name) }.to_string_lossy().into_owned())
}

/// libav's description of pixel format `fmt` (a value from libav), if it knows it.
fn pix_fmt_desc(fmt: i32) -> Option<&'static ffi::AVPixFmtDescriptor> {
    if fmt < 0 {
        return None;
    }
    // SAFETY: fmt is an AVPixelFormat value from libav; av_pix_fmt_desc_get returns
    // null or a static descriptor.
    unsafe { ffi::av_pix_fmt_desc_get(std::mem::transmute::<i32, ffi::AVPixelFormat>(fmt)).as_ref() }
}

/// Bits per luma sample of a pixel format (8 when unknown).
pub fn bit_depth(fmt: i32) -> u32 {
    pix_fmt_desc(fmt).map_or(8, |d| d.comp[0].depth as u32)
}

pub fn channel_layout_name(p: &ffi::AVCodecParameters) -> String {
    let mut buf = [0 as std::os::raw::c_char; 128];
    // SAFETY: the buffer is large enough and NUL-terminated by libav on success.
    unsafe {
        if ffi::av_channel_layout_describe(&p.ch_layout, buf.as_mut_ptr(), buf.len()) < 0 {
            return "unknown".into();
        }
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// A video stream's nominal frame rate: the rate its frames were captured on, which
/// a variable frame rate source (a phone dropping frames in low light) keeps
/// between its gaps. libav's guess, as the ffmpeg CLI makes it: the lowest rate all
/// timestamps fit, unless that is a timebase rather than a rate, or a field rate of
/// a frame-coded stream, where it takes the average or the codec's rate. MP4's
/// average rate is frames over duration instead (a phone's 30 fps recording with a
/// fifth of its frames dropped averages 24), and Matroska's is the nominal one.
pub fn nominal_frame_rate(ictx: &ff::format::context::Input, stream: &ff::format::stream::Stream) -> ff::Rational {
    // SAFETY: both pointers belong to the live input context; libav only reads them
    // (a null frame is allowed).
    let r = unsafe { ffi::av_guess_frame_rate(ictx.as_ptr() as *mut _, stream.as_ptr() as *mut _, std::ptr::null_mut()) };
    ff::Rational::from(r)
}

/// Filters that turn a stream's pictures into standard dynamic range BT.709 at the
/// same size (a `format` filter after them picks YUV or RGB), or `None` for a
/// stream that is BT.709 (or BT.601) already. Players take every output as BT.709;
/// two kinds of source are not:
/// - **High dynamic range.** PQ (HDR10, the base layer of Dolby Vision) and HLG
///   (phones since 2020, broadcast) are both mapped with HDR reference white (203
///   nits, BT.2408) at SDR white, and highlights above it rolled off (Möbius)
///   instead of clipped. Unmapped, they look grey and washed out.
/// - **Standard dynamic range in BT.2020's wider gamut** (10-bit cameras and
///   phones): no tone mapping, only its matrix and gamut. Unmapped, its colours
///   shift (a yellow gets a third of blue).
///
/// BT.2020 colours are brought into BT.709's gamut in linear light. The input's
/// colour properties are named from the stream's parameters, so a decoder that
/// leaves them out of its frames does not change the result.
pub fn to_bt709(p: &ffi::AVCodecParameters) -> Option<String> {
    use ffi::{AVColorPrimaries as P, AVColorSpace as S, AVColorTransferCharacteristic as T};
    // BT.2020's gamut, or its matrix alone (a camera's odd mix with BT.709 primaries).
    let wide = p.color_primaries == P::AVCOL_PRI_BT2020 || matches!(p.color_space, S::AVCOL_SPC_BT2020_NCL | S::AVCOL_SPC_BT2020_CL);
    let (transfer, hdr) = match p.color_trc {
        T::AVCOL_TRC_SMPTE2084 => ("smpte2084", true),
        T::AVCOL_TRC_ARIB_STD_B67 => ("arib-std-b67", true),
        T::AVCOL_TRC_BT2020_10 if wide => ("2020_10", false),
        T::AVCOL_TRC_BT2020_12 if wide => ("2020_12", false),
        T::AVCOL_TRC_SMPTE170M if wide => ("601", false),
        _ if wide => ("709", false),
        _ => return None,
    };
    let primaries = if p.color_primaries == P::AVCOL_PRI_BT709 { "709" } else { "2020" };
    let matrix = match p.color_space {
        S::AVCOL_SPC_BT709 => "709",
        S::AVCOL_SPC_BT2020_CL => "2020_cl",
        _ => "2020_ncl",
    };
    let range = if p.color_range == ffi::AVColorRange::AVCOL_RANGE_JPEG { "full" } else { "limited" };
    let tonemap = if hdr { "tonemap=tonemap=mobius:desat=0," } else { "" };
    Some(format!(
        "zscale=tin={transfer}:pin={primaries}:min={matrix}:rin={range}:t=linear:p={primaries}:npl=203,format=gbrpf32le,zscale=p=709,\
         {tonemap}zscale=t=709:m=709:r=limited"
    ))
}

/// libav's name of a colour property's value (`av_color_*_name`), or `None` where
/// the stream leaves it unspecified.
pub fn colour_name<T>(name: unsafe extern "C" fn(T) -> *const std::os::raw::c_char, value: T) -> Option<String> {
    // SAFETY: libav returns null or a static NUL-terminated name.
    let n = unsafe { name(value) };
    let n = (!n.is_null()).then(|| unsafe { CStr::from_ptr(n) }.to_string_lossy().into_owned())?;
    (n != "unknown" && n != "reserved").then_some(n)
}

/// A stream's Dolby Vision configuration record, if its container declares one.
pub fn dolby_vision(stream: &ff::format::stream::Stream) -> Option<proto::probe::DolbyVision> {
    let sd = stream.side_data().find(|sd| sd.kind() == ff::codec::packet::side_data::Type::DOVI_CONF)?;
    // AVDOVIDecoderConfigurationRecord: eight bytes, in this order: version major
    // and minor, profile, level, RPU, EL and BL present, base layer compatibility.
    match *sd.data() {
        [_, _, profile, level, _, _, _, compatibility, ..] => Some(proto::probe::DolbyVision { profile, level, compatibility }),
        _ => None,
    }
}

/// What a rendition's pixels are, which its encoder says in the stream (H.264's
/// VUI), so that every player shows every rung of a ladder alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Colours {
    pub primaries: ffi::AVColorPrimaries,
    pub transfer: ffi::AVColorTransferCharacteristic,
    pub matrix: ffi::AVColorSpace,
}

impl Colours {
    pub const BT709: Colours = Colours {
        primaries: ffi::AVColorPrimaries::AVCOL_PRI_BT709,
        transfer: ffi::AVColorTransferCharacteristic::AVCOL_TRC_BT709,
        matrix: ffi::AVColorSpace::AVCOL_SPC_BT709,
    };

    /// The colours of a rendition of the stream with parameters `p`; `mapped`: its
    /// pictures go through [`to_bt709`]. The filters keep a YUV source's matrix,
    /// primaries and transfer, so those are said as the source says them. Where
    /// it says no matrix, the one a player would take for the source's size
    /// (BT.709 from 720 lines, BT.601 below) is said, so that the source's 240p
    /// rung is not shown as BT.601 and its 1080p rung as BT.709. An RGB source's
    /// pictures become YUV by libswscale's matrix, BT.601.
    pub fn of(p: &ffi::AVCodecParameters, mapped: bool) -> Colours {
        use ffi::{AVColorPrimaries as P, AVColorSpace as S, AVColorTransferCharacteristic as T};
        if mapped {
            return Colours::BT709;
        }
        let guess = if p.height >= 720 { S::AVCOL_SPC_BT709 } else { S::AVCOL_SPC_SMPTE170M };
        let matrix = match p.color_space {
            _ if is_rgb(p.format) => S::AVCOL_SPC_SMPTE170M,
            m @ (S::AVCOL_SPC_BT709 | S::AVCOL_SPC_SMPTE170M | S::AVCOL_SPC_BT470BG | S::AVCOL_SPC_SMPTE240M | S::AVCOL_SPC_FCC) => m,
            _ => guess,
        };
        let primaries = match p.color_primaries {
            P::AVCOL_PRI_RESERVED0 | P::AVCOL_PRI_RESERVED => P::AVCOL_PRI_UNSPECIFIED,
            known => known,
        };
        let transfer = match p.color_trc {
            T::AVCOL_TRC_RESERVED0 | T::AVCOL_TRC_RESERVED => T::AVCOL_TRC_UNSPECIFIED,
            known => known,
        };
        Colours { primaries, transfer, matrix }
    }

    /// Sets them on an encoder not yet opened, with the limited range every
    /// rendition's `format=yuv420p` gives.
    pub fn tag(self, encoder: &mut ff::codec::context::Context) {
        // SAFETY: plain fields of an encoder context not yet opened.
        unsafe {
            let c = encoder.as_mut_ptr();
            (*c).color_primaries = self.primaries;
            (*c).color_trc = self.transfer;
            (*c).colorspace = self.matrix;
            (*c).color_range = ffi::AVColorRange::AVCOL_RANGE_MPEG;
        }
    }
}

/// Whether pixel format `fmt` holds RGB (or palette) pictures rather than YUV.
fn is_rgb(fmt: i32) -> bool {
    pix_fmt_desc(fmt).is_some_and(|d| d.flags & (ffi::AV_PIX_FMT_FLAG_RGB | ffi::AV_PIX_FMT_FLAG_PAL) as u64 != 0)
}

/// Gives a graph its own reference to a decoded frame, leaving `f` intact for the
/// next rendition's graph (ffmpeg-next's `add` would take the frame's data away).
pub fn add_frame(g: &mut ff::filter::Graph, f: &ff::Frame) -> std::result::Result<(), ff::Error> {
    let mut src = g.get("in").expect("source");
    // SAFETY: both pointers are valid for the call; KEEP_REF makes libav take a new
    // reference to the frame's buffers instead of moving them out of `f`.
    let ret = unsafe {
        ff::ffi::av_buffersrc_add_frame_flags(src.as_mut_ptr(), f.as_ptr() as *mut _, ff::ffi::AV_BUFFERSRC_FLAG_KEEP_REF as i32)
    };
    if ret < 0 { Err(ff::Error::from(ret)) } else { Ok(()) }
}

/// Clockwise rotation a player applies, from the display matrix: 0, 90, 180 or 270.
pub fn rotation(stream: &ff::format::stream::Stream) -> u32 {
    for sd in stream.side_data() {
        if sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
            // SAFETY: a display matrix is nine i32s; we checked the length.
            let theta = unsafe { ffi::av_display_rotation_get(sd.data().as_ptr() as *const i32) };
            if theta.is_nan() {
                return 0;
            }
            // libav's angle is counter-clockwise; players rotate clockwise by its negation.
            let cw = (-theta).rem_euclid(360.0);
            return ((cw / 90.0).round() as u32 % 4) * 90;
        }
    }
    0
}

/// Flushes the buffered fragment of a fragmented MP4 muxer (`movflags=frag_custom`).
pub fn flush_fragment(octx: &mut ff::format::context::Output) -> Result<()> {
    // SAFETY: a null packet asks the interleaver to drain, then the muxer to flush.
    let (a, b) = unsafe {
        let a = ffi::av_interleaved_write_frame(octx.as_mut_ptr(), std::ptr::null_mut());
        let b = ffi::av_write_frame(octx.as_mut_ptr(), std::ptr::null_mut());
        (a, b)
    };
    if a < 0 || b < 0 {
        return Err(EngineError::internal("flushing an fMP4 fragment", ff::Error::from(a.min(b))));
    }
    Ok(())
}

/// Lowers libav's log level so its chatter does not reach stderr, where the farm
/// reads our one-line error. Errors still show.
pub fn quiet_logs() {
    ff::util::log::set_level(ff::util::log::Level::Error);
}

/// Cores this process's video decoders, encoders and filter graphs may use; 0
/// leaves the count to libav, which counts the machine's processors, not a
/// container's CPU quota.
static CORES: AtomicU32 = AtomicU32::new(0);

/// Sizes this process's video decoder, encoder and filter threads to `cores`: a
/// worker passes its task's share of the CPU it may use (its cgroup quota or
/// affinity, over its slots). On a quarter of a core, libav's own count (every
/// processor of the host) would run three decoder and three x264 threads that
/// only take turns, at 6-10% more CPU per frame than one thread (measured on a
/// 240p chunk).
pub fn set_cores(cores: u32) {
    CORES.store(cores, Ordering::Relaxed);
}

/// The cores given by [`set_cores`], if any.
fn cores() -> Option<u32> {
    Some(CORES.load(Ordering::Relaxed)).filter(|&n| n > 0)
}

/// Threads an audio task encodes its tracks on: one a track, up to the task's
/// cores (the machine's processors when unset). AAC encoders run on one thread
/// each, so a second track is the only way a second core helps.
pub fn track_threads(tracks: usize) -> usize {
    let cores = cores().map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), |n| n as usize);
    tracks.min(cores).max(1)
}

/// Frame threads for a video decoder: libav's own rule (one more than the cores,
/// one on a single core) applied to the task's cores; 0 (libav's count) when unset.
fn decoder_threads() -> usize {
    match cores() {
        None => 0,
        Some(1) => 1,
        Some(n) => n as usize + 1,
    }
}

/// The `threads` option for a video encoder, by each encoder's own rule applied to
/// the task's cores: x264 runs 1.5 frame threads per core; libvpx one per core
/// (row-based multithreading spreads them over each frame's tile columns), which
/// is what the ffmpeg CLI's `-threads auto` gives it. Without cores, x264 counts
/// the host's processors itself (`None`), and libvpx, to which libav would give
/// one thread, gets `0`: libav's count of the host's processors.
pub fn encoder_threads(codec: VideoCodec) -> Option<usize> {
    encoder_threads_on(codec, cores())
}

fn encoder_threads_on(codec: VideoCodec, cores: Option<u32>) -> Option<usize> {
    match (codec, cores) {
        (VideoCodec::H264, n) => n.map(|n| n as usize * 3 / 2),
        (VideoCodec::Vp9, n) => Some(n.map_or(0, |n| n as usize)),
    }
}

/// Limits a filter graph's slice threads (the scaler's among them) to the task's
/// cores; libav's default is one per processor of the host.
pub fn size_filter_threads(graph: &mut ff::filter::Graph) {
    if let Some(n) = cores() {
        // SAFETY: nb_threads is a plain field of the live graph, read when it is configured.
        unsafe { (*graph.as_mut_ptr()).nb_threads = n as i32 };
    }
}

/// Opens a threaded video decoder for an input stream, with [`decoder_threads`].
/// A codec this libav cannot decode is bad input.
pub fn video_decoder(ist: &ff::format::stream::Stream) -> Result<ff::decoder::Video> {
    let codec_id = params(ist).codec_id;
    let mut dctx = ff::codec::context::Context::from_parameters(ist.parameters())
        .map_err(|e| EngineError::internal("reading decoder parameters", e))?;
    let count = decoder_threads();
    dctx.set_threading(ff::codec::threading::Config { kind: ff::codec::threading::Type::Frame, count, ..Default::default() });
    let mut decoder =
        dctx.decoder().video().map_err(|e| EngineError::bad(format!("unsupported video codec {}: {e}", codec_name(codec_id))))?;
    decoder.set_packet_time_base(ist.time_base());
    Ok(decoder)
}

/// Seeks the source to a video keyframe at or before `before` seconds (on the
/// output's timeline, which starts at `start` of the source's) and returns that
/// keyframe's packet, the first to decode (`next` reads the packets); `None` when
/// the source has no video keyframe at all. A container with a keyframe index
/// (MP4, Matroska) lands on one at once. MPEG-TS and other streams without one
/// land on any packet (libav's binary search takes every timestamp for a
/// keyframe): the video packets before the next keyframe cannot be decoded and
/// are skipped, and when that keyframe is after `before` (or there is none), the
/// frames in between would be lost, so the seek goes further back, to the
/// source's start at worst.
pub fn seek_keyframe_before(
    ictx: &mut ff::format::context::Input,
    video: usize,
    start: f64,
    before: f64,
    mut next: impl FnMut(&mut ff::format::context::Input) -> Result<Option<ff::Packet>>,
) -> Result<Option<ff::Packet>> {
    let time_base = ictx.stream(video).expect("the planned stream exists").time_base();
    // A second early first, so that a frame the caller's first output takes from
    // just before `before` (rounding to a frame grid) is decoded; then 5, 25,
    // 125... seconds.
    let mut back = 1.0;
    loop {
        let at = (before - back).max(0.0);
        let target = ((at + start) * 1e6) as i64;
        ictx.seek(target, ..target).map_err(|e| EngineError::internal("seeking the source", e))?;
        let key = loop {
            let Some(pkt) = next(ictx)? else { break None };
            if pkt.stream() == video && pkt.is_key() {
                break Some(pkt);
            }
        };
        let time = key.as_ref().and_then(|k| k.pts().or(k.dts())).map(|t| f64::from(time_base) * t as f64 - start);
        if at <= 0.0 || time.is_some_and(|t| t <= before + 1e-6) {
            return Ok(key);
        }
        back *= 5.0;
    }
}

/// Largest side of an embedded picture (cover art) that is decoded; an album's
/// is 3000 at most.
const MAX_ATTACHED_SIDE: i32 = 8192;

/// An embedded picture's stream (an MP3's or M4A's front cover) decoded from the
/// packet the open input holds for it, or `None` where it does not decode.
pub fn attached_picture(s: &ff::format::stream::Stream) -> Option<ff::frame::Video> {
    let p = params(s);
    if !(1..=MAX_ATTACHED_SIDE).contains(&p.width) || !(1..=MAX_ATTACHED_SIDE).contains(&p.height) {
        return None;
    }
    let data = attached_picture_data(s)?;
    let mut decoder = video_decoder(s).ok()?;
    decoder.send_packet(&ff::Packet::copy(data)).ok()?;
    decoder.send_eof().ok()?;
    let mut frame = ff::frame::Video::empty();
    decoder.receive_frame(&mut frame).ok()?;
    Some(frame)
}

/// The encoded bytes of stream `s`'s attached picture (a cover), if it has one,
/// borrowed from the open input.
pub fn attached_picture_data<'s>(s: &'s ff::format::stream::Stream) -> Option<&'s [u8]> {
    // SAFETY: attached_pic is a packet the open input owns for this stream, which
    // `s` borrows (so the input outlives the slice and is not changed meanwhile);
    // its data is `size` bytes, or null when empty.
    unsafe {
        let pic = &(*s.as_ptr()).attached_pic;
        if pic.data.is_null() || pic.size <= 0 {
            return None;
        }
        Some(std::slice::from_raw_parts(pic.data, pic.size as usize))
    }
}

/// How many bytes an input's reads have fetched so far (0 for an input libav
/// reads without an I/O context).
pub fn bytes_read(ictx: &ff::format::context::Input) -> u64 {
    // SAFETY: `pb` is null or the open input's live I/O context; bytes_read is a
    // plain statistic field of it.
    unsafe {
        let pb = (*ictx.as_ptr()).pb;
        if pb.is_null() { 0 } else { (*pb).bytes_read.max(0) as u64 }
    }
}

/// The container's start time in seconds (0 when unknown); outputs start at 0.
pub fn start_seconds(ictx: &ff::format::context::Input) -> f64 {
    // SAFETY: start_time is a plain field of the open input context.
    let start_time = unsafe { (*ictx.as_ptr()).start_time };
    if start_time != ffi::AV_NOPTS_VALUE { start_time as f64 / 1e6 } else { 0.0 }
}

/// Makes `dst` another reference to `src`'s picture (no copy), dropping what `dst` held.
pub fn frame_ref(dst: &mut ff::frame::Video, src: &ff::frame::Video) -> std::result::Result<(), ff::Error> {
    // SAFETY: both frames are valid; av_frame_ref needs an unreferenced destination.
    let ret = unsafe {
        ffi::av_frame_unref(dst.as_mut_ptr());
        ffi::av_frame_ref(dst.as_mut_ptr(), src.as_ptr())
    };
    if ret < 0 { Err(ff::Error::from(ret)) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EngineError;

    fn is_bad(e: &EngineError) -> bool {
        matches!(e, EngineError::BadInput(_))
    }

    /// A demuxer names its formats as a list; one of them on the whitelist will do.
    #[test]
    fn whitelisted_formats_are_found_in_demuxer_name_lists() {
        assert!(whitelisted("mov,mp4,m4a,3gp,3g2,mj2") && whitelisted("matroska,webm") && whitelisted("mpegts"));
        assert!(!whitelisted("png_pipe") && !whitelisted("image2") && !whitelisted("srt") && !whitelisted("hls"));
    }

    /// Reaching the store: a refusal is bad input, anything else retryable. What the
    /// demuxer makes of the bytes is the source's, over HTTP as from a file (the
    /// reader's own failures are checked before, see `read_failure`).
    #[test]
    fn reaching_the_store_is_classified_apart_from_reading_the_source() {
        let url = "http://store/media/jobs/j/source";
        for e in [ff::Error::HttpServerError, ff::Error::Exit, ff::Error::Other { errno: libc::ECONNREFUSED }] {
            assert!(!is_bad(&fetch_error(url, e)), "{e:?} reaching the store");
        }
        for e in [ff::Error::HttpNotFound, ff::Error::HttpForbidden] {
            assert!(is_bad(&fetch_error(url, e)), "{e:?} reaching the store");
        }
        for input in [url, "/data/source"] {
            for e in [ff::Error::Eof, ff::Error::InvalidData] {
                assert!(is_bad(&open_error(input, e)), "{e:?} from {input}");
            }
        }
    }

    #[test]
    fn each_encoder_gets_threads_by_its_own_rule() {
        let rule = encoder_threads_on;
        assert_eq!((rule(VideoCodec::H264, Some(1)), rule(VideoCodec::H264, Some(4))), (Some(1), Some(6)));
        assert_eq!((rule(VideoCodec::Vp9, Some(1)), rule(VideoCodec::Vp9, Some(4))), (Some(1), Some(4)));
        // Unsized: x264 counts the processors itself; libvpx is told to (0), since
        // libav's default for it is a single thread.
        assert_eq!((rule(VideoCodec::H264, None), rule(VideoCodec::Vp9, None)), (None, Some(0)));
    }
}
