//! Weight loading: safetensors (f32 / f16 / bf16) onto Burn modules by diffusers key names.
//!
//! One loader body, several sources (the ratchet pattern, `load_inner(FnMut(&str) -> Tensor)`):
//! a memory-mapped file natively ([`SafetensorsFile`]), a byte buffer ([`SafetensorsBuffer`]),
//! or a map of individual tensors ([`TensorMap`], what the browser assembles from IndexedDB).
//! The module's own field paths are the checkpoint keys; the few places where Burn's names or
//! layouts differ from PyTorch's live in one table, [`burn_name_to_torch`] plus the Linear
//! transpose in [`Layout`]. Every problem of a checkpoint (missing keys, unexpected keys, shape
//! or dtype mismatches) is collected and reported at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use burn::backend::DispatchDevice;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use half::{bf16, f16};
use safetensors::Dtype as StDtype;

/// The stored element type of a checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
    /// Any other dtype (ints, f64, f8...): loading it as a float weight is an error.
    Other(StDtype),
}

impl StoredDType {
    fn from_safetensors(dtype: StDtype) -> Self {
        match dtype {
            StDtype::F32 => Self::F32,
            StDtype::F16 => Self::F16,
            StDtype::BF16 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// Bytes per element for the float types this loader reads.
    fn size(self) -> Option<usize> {
        match self {
            Self::F32 => Some(4),
            Self::F16 | Self::BF16 => Some(2),
            Self::Other(_) => None,
        }
    }
}

impl fmt::Display for StoredDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::F32 => write!(f, "F32"),
            Self::F16 => write!(f, "F16"),
            Self::BF16 => write!(f, "BF16"),
            Self::Other(d) => write!(f, "{d:?}"),
        }
    }
}

/// One checkpoint tensor: dtype, shape and little-endian bytes (borrowed from a mapped file or
/// owned).
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    pub dtype: StoredDType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

/// The number of elements of `shape`, `None` when it overflows.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl RawTensor<'_> {
    /// Number of elements the shape describes.
    pub fn numel(&self) -> usize {
        checked_numel(&self.shape).unwrap_or(usize::MAX)
    }

    /// Converts to f32 values. Errors on non-float dtypes or a byte length that does not match.
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        let n = self.numel();
        let size = self.dtype.size().ok_or_else(|| {
            format!(
                "dtype {} is not a float type (expected F32, F16 or BF16)",
                self.dtype
            )
        })?;
        if Some(self.data.len()) != n.checked_mul(size) {
            return Err(format!(
                "{} bytes of data for shape {:?} in {} (expected {})",
                self.data.len(),
                self.shape,
                self.dtype,
                n * size
            ));
        }
        let bytes = &self.data[..];
        Ok(match self.dtype {
            StoredDType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StoredDType::F16 => f16_bytes_to_f32(bytes),
            StoredDType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StoredDType::Other(_) => unreachable!("checked by size()"),
        })
    }

    /// Converts to f16 values (for devices whose float type is f16).
    fn to_f16(&self) -> Result<Vec<f16>, String> {
        if self.dtype == StoredDType::F16 {
            let n = self.numel();
            if Some(self.data.len()) != n.checked_mul(2) {
                return Err(format!(
                    "{} bytes of data for shape {:?} in F16",
                    self.data.len(),
                    self.shape
                ));
            }
            return Ok(self
                .data
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect());
        }
        Ok(self.to_f32()?.into_iter().map(f16::from_f32).collect())
    }
}

/// Where the loader reads tensors from.
pub trait TensorSource {
    /// A name for messages: the file path, or what the browser calls the source.
    fn name(&self) -> &str;
    /// Every tensor key the source holds.
    fn keys(&self) -> Vec<String>;
    /// The tensor stored under `key`, `Ok(None)` when there is none.
    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError>;
}

/// A parsed safetensors buffer (owned bytes or a memory map).
pub struct SafetensorsBuffer<B: AsRef<[u8]>> {
    name: String,
    bytes: B,
    data_start: usize,
    /// key -> (dtype, shape, [start, end) relative to the data section)
    index: BTreeMap<String, (StDtype, Vec<usize>, usize, usize)>,
}

impl<B: AsRef<[u8]>> fmt::Debug for SafetensorsBuffer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsBuffer")
            .field("name", &self.name)
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl<B: AsRef<[u8]>> SafetensorsBuffer<B> {
    /// Parses the header of a safetensors buffer; `name` appears in every error.
    pub fn new(name: impl Into<String>, bytes: B) -> Result<Self, WeightError> {
        let name = name.into();
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(bytes.as_ref())
            .map_err(|e| WeightError::Format {
                source_name: name.clone(),
                message: format!(
                    "not a valid safetensors file ({e}); re-download it or check the path"
                ),
            })?;
        let mut index = BTreeMap::new();
        for (key, info) in metadata.tensors() {
            index.insert(
                key.clone(),
                (
                    info.dtype,
                    info.shape.clone(),
                    info.data_offsets.0,
                    info.data_offsets.1,
                ),
            );
        }
        Ok(Self {
            name,
            bytes,
            data_start: 8 + header_len,
            index,
        })
    }
}

impl<B: AsRef<[u8]>> TensorSource for SafetensorsBuffer<B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn keys(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        let Some((dtype, shape, start, end)) = self.index.get(key) else {
            return Ok(None);
        };
        let bytes = self.bytes.as_ref();
        let (s, e) = (self.data_start + start, self.data_start + end);
        if e > bytes.len() || s > e {
            return Err(WeightError::Format {
                source_name: self.name.clone(),
                message: format!(
                    "tensor {key} points past the end of the file (truncated download?)"
                ),
            });
        }
        Ok(Some(RawTensor {
            dtype: StoredDType::from_safetensors(*dtype),
            shape: shape.clone(),
            data: Cow::Borrowed(&bytes[s..e]),
        }))
    }
}

/// Random access to the bytes of one file that is not in memory: a browser `Blob` stored in
/// IndexedDB, a file on disk.
pub trait ByteRange {
    /// The file's size in bytes.
    fn size(&self) -> u64;
    /// `len` bytes from `offset` (the caller stays within [`Self::size`]).
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String>;
}

/// A file on disk read by ranges (native): what needs only a safetensors file's header (the
/// checkpoint identification) reads just that.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct FileRange {
    file: std::sync::Mutex<std::fs::File>,
    size: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileRange {
    pub fn open(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file: std::sync::Mutex::new(file),
            size,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteRange for FileRange {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = self
            .file
            .lock()
            .map_err(|_| "an earlier read panicked".to_string())?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(len);
        (&mut *file)
            .take(len as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    }
}

/// A safetensors file read tensor by tensor through a [`ByteRange`]: only the header stays in
/// memory, each tensor's bytes are read when the loader asks for it (the browser streams a
/// 2 GB UNet this way without ever holding it in wasm memory).
pub struct SafetensorsReader<R: ByteRange> {
    name: String,
    reader: R,
    data_start: u64,
    index: BTreeMap<String, (StDtype, Vec<usize>, usize, usize)>,
}

impl<R: ByteRange> fmt::Debug for SafetensorsReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsReader")
            .field("name", &self.name)
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// Safetensors headers are at most 100 MB (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

impl<R: ByteRange> SafetensorsReader<R> {
    /// Reads and checks the header: every tensor must lie inside the file and have the size
    /// its dtype and shape imply.
    pub fn new(name: impl Into<String>, reader: R) -> Result<Self, WeightError> {
        let name = name.into();
        let bad = |message: String| WeightError::Format {
            source_name: name.clone(),
            message: format!(
                "not a valid safetensors file ({message}); delete it and download it again"
            ),
        };
        let size = reader.size();
        if size < 8 {
            return Err(bad(format!("{size} bytes, shorter than a header")));
        }
        let len_bytes = reader.read(0, 8).map_err(&bad)?;
        let header_len = u64::from_le_bytes(
            len_bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad("short read of the header length".into()))?,
        );
        if header_len > MAX_HEADER || 8 + header_len > size {
            return Err(bad(format!(
                "header length {header_len} for a file of {size} bytes"
            )));
        }
        let header = reader.read(8, header_len as usize).map_err(&bad)?;
        // The safetensors crate's own validated metadata (its `Deserialize` checks what
        // `SafeTensors::read_metadata` checks for the in-memory reader): offsets contiguous from
        // 0, each tensor's byte count equal to its dtype x shape product in checked arithmetic.
        let metadata: safetensors::tensor::Metadata =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let described = data_start + metadata.data_len() as u64;
        if described != size {
            return Err(bad(format!(
                "the header describes {described} bytes but the file has {size}{}",
                if described > size {
                    " (truncated download?)"
                } else {
                    ""
                }
            )));
        }
        let index = metadata
            .tensors()
            .into_iter()
            .map(|(key, info)| {
                let (start, end) = info.data_offsets;
                (key, (info.dtype, info.shape.clone(), start, end))
            })
            .collect();
        Ok(Self {
            name,
            reader,
            data_start,
            index,
        })
    }
}

impl<R: ByteRange> SafetensorsReader<R> {
    /// The byte source.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// Every tensor's name and shape, from the header.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.index
            .iter()
            .map(|(key, (_, shape, _, _))| (key.clone(), shape.clone()))
            .collect()
    }
}

impl<R: ByteRange> TensorSource for SafetensorsReader<R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn keys(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        let Some((dtype, shape, start, end)) = self.index.get(key) else {
            return Ok(None);
        };
        let data = self
            .reader
            .read(self.data_start + *start as u64, end - start)
            .map_err(|message| WeightError::Format {
                source_name: self.name.clone(),
                message: format!("reading tensor {key}: {message}"),
            })?;
        if data.len() != end - start {
            return Err(WeightError::Format {
                source_name: self.name.clone(),
                message: format!(
                    "reading tensor {key}: got {} of {} bytes",
                    data.len(),
                    end - start
                ),
            });
        }
        Ok(Some(RawTensor {
            dtype: StoredDType::from_safetensors(*dtype),
            shape: shape.clone(),
            data: Cow::Owned(data),
        }))
    }
}

/// A safetensors file, memory-mapped (native only).
#[cfg(not(target_arch = "wasm32"))]
pub type SafetensorsFile = SafetensorsBuffer<memmap2::Mmap>;

#[cfg(not(target_arch = "wasm32"))]
impl SafetensorsBuffer<memmap2::Mmap> {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| WeightError::Io {
            source_name: name.clone(),
            error: e,
        })?;
        // SAFETY: the map is read-only and private to this process; a file truncated by another
        // process while mapped is outside what any loader can defend against (candle, burn-store
        // and safetensors' own examples map checkpoints the same way).
        // `populate`: the whole file is read anyway, and faulting it in with the map is far
        // cheaper than one page fault per 4 KiB page later (Linux; a hint elsewhere).
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| {
            WeightError::Io {
                source_name: name.clone(),
                error: e,
            }
        })?;
        Self::new(name, map)
    }
}

/// Individually supplied tensors (the browser streams them from IndexedDB).
#[derive(Debug, Default)]
pub struct TensorMap {
    name: String,
    tensors: BTreeMap<String, RawTensor<'static>>,
}

impl TensorMap {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tensors: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, key: impl Into<String>, tensor: RawTensor<'static>) {
        self.tensors.insert(key.into(), tensor);
    }
}

impl TensorSource for TensorMap {
    fn name(&self) -> &str {
        &self.name
    }

    fn keys(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        Ok(self.tensors.get(key).map(|t| RawTensor {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: Cow::Borrowed(&t.data[..]),
        }))
    }
}

/// Several tensor sources seen as one: a checkpoint split into shards
/// (`diffusion_pytorch_model.safetensors.index.json` and the files it names). Each key must live
/// in exactly one shard.
pub struct ShardedSource<'a> {
    name: String,
    parts: Vec<Box<dyn TensorSource + 'a>>,
    owner: BTreeMap<String, usize>,
}

impl fmt::Debug for ShardedSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedSource")
            .field("name", &self.name)
            .field("shards", &self.parts.len())
            .finish()
    }
}

impl<'a> ShardedSource<'a> {
    /// Joins `parts`; a key found in two shards is an error.
    pub fn new(
        name: impl Into<String>,
        parts: Vec<Box<dyn TensorSource + 'a>>,
    ) -> Result<Self, WeightError> {
        let name = name.into();
        let mut owner = BTreeMap::new();
        for (i, part) in parts.iter().enumerate() {
            for key in part.keys() {
                if let Some(j) = owner.insert(key.clone(), i) {
                    return Err(WeightError::Format {
                        source_name: name,
                        message: format!(
                            "tensor {key} is in two shards ({} and {}); the shards belong to different checkpoints",
                            parts[j].name(),
                            part.name()
                        ),
                    });
                }
            }
        }
        Ok(Self { name, parts, owner })
    }
}

impl TensorSource for ShardedSource<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn keys(&self) -> Vec<String> {
        self.owner.keys().cloned().collect()
    }

    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        match self.owner.get(key) {
            Some(&i) => self.parts[i].tensor(key),
            None => Ok(None),
        }
    }
}

/// The shard file names a safetensors index (`*.safetensors.index.json`, as transformers and
/// diffusers write it: `{"metadata": .., "weight_map": {key: file}}`) names, in order of first
/// appearance. Names are plain file names next to the index: no folders, no `..`.
pub fn shard_files(name: &str, index_json: &[u8]) -> Result<Vec<String>, WeightError> {
    let bad = |message: String| WeightError::Format {
        source_name: name.to_string(),
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(index_json)
        .map_err(|e| bad(format!("not a JSON shard index: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("the shard index has no \"weight_map\" object".into()))?;
    let mut files: Vec<String> = vec![];
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map.{key} is not a file name")))?;
        let plain = !file.is_empty()
            && !file.contains(['/', '\\'])
            && file != ".."
            && file != "."
            && file.ends_with(".safetensors");
        if !plain {
            return Err(bad(format!(
                "weight_map.{key} names {file:?}: shards must be .safetensors files next to the index"
            )));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    if files.is_empty() {
        return Err(bad("the shard index names no shard files".into()));
    }
    Ok(files)
}

/// How a tensor the model reads is made from a stored one.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// As stored.
    Same,
    /// A 1x1 convolution read as a linear layer: `[o, i, 1, 1]` or `[o, i, 1]` -> `[o, i]`.
    Squeeze,
    /// Part `part` of `of` equal blocks of rows (OpenCLIP's fused q / k / v projection).
    Rows { part: usize, of: usize },
}

/// Where a tensor the model reads is stored, and how it is made from the stored one.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub stored: String,
    pub transform: Transform,
}

/// The name the model reads -> how it is read.
pub type KeyTable = BTreeMap<String, Mapped>;

/// A tensor source read under other key names (and layouts): a single-file checkpoint read as
/// diffusers components ([`MappedSource::only`]: the table's keys alone), or a folder whose VAE
/// attention still has the pre-0.14 diffusers names ([`MappedSource::renamed`]: the table's
/// keys, and every other stored key as it is).
pub struct MappedSource<'a> {
    name: String,
    inner: Box<dyn TensorSource + 'a>,
    table: Cow<'a, KeyTable>,
    /// Stored keys not in the table are read under their own name (else they are not there).
    others: bool,
}

impl fmt::Debug for MappedSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedSource")
            .field("name", &self.name)
            .field("mapped", &self.table.len())
            .field("others", &self.others)
            .finish()
    }
}

impl<'a> MappedSource<'a> {
    /// The keys of `table` alone, read from `inner`; `name` names the view in messages.
    pub fn only(name: String, inner: Box<dyn TensorSource + 'a>, table: &'a KeyTable) -> Self {
        Self {
            name,
            inner,
            table: Cow::Borrowed(table),
            others: false,
        }
    }

    /// `inner` with some keys read under other names: `renames` are (stored name, name the
    /// model reads) pairs; a renamed key is no longer there under its stored name.
    pub fn renamed(inner: Box<dyn TensorSource + 'a>, renames: Vec<(String, String)>) -> Self {
        let table = renames
            .into_iter()
            .map(|(stored, new)| {
                let mapped = Mapped {
                    stored,
                    transform: Transform::Same,
                };
                (new, mapped)
            })
            .collect();
        Self {
            name: inner.name().to_string(),
            inner,
            table: Cow::Owned(table),
            others: true,
        }
    }

    /// Whether `key` is a stored key the table reads under another name.
    fn is_renamed_away(&self, key: &str) -> bool {
        !self.table.contains_key(key) && self.table.values().any(|m| m.stored == key)
    }
}

impl TensorSource for MappedSource<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.table.keys().cloned().collect();
        if self.others {
            let stored: BTreeSet<&str> = self.table.values().map(|m| m.stored.as_str()).collect();
            keys.extend(
                self.inner
                    .keys()
                    .into_iter()
                    .filter(|k| !stored.contains(k.as_str()) && !self.table.contains_key(k)),
            );
        }
        keys
    }

    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        let Some(m) = self.table.get(key) else {
            if self.others && !self.is_renamed_away(key) {
                return self.inner.tensor(key);
            }
            return Ok(None);
        };
        let Some(raw) = self.inner.tensor(&m.stored)? else {
            return Ok(None);
        };
        let format_error = |message: String| WeightError::Format {
            source_name: self.name.clone(),
            message: format!("{key} (stored as {}): {message}", m.stored),
        };
        match m.transform {
            Transform::Same => Ok(Some(raw)),
            Transform::Squeeze => {
                let s = &raw.shape;
                if s.len() < 2 || s[2..].iter().any(|&d| d != 1) {
                    return Err(format_error(format!(
                        "shape {s:?} is not a 1x1 convolution"
                    )));
                }
                Ok(Some(RawTensor {
                    shape: s[..2].to_vec(),
                    ..raw
                }))
            }
            Transform::Rows { part, of } => {
                let rows = raw.shape.first().copied().unwrap_or(0);
                if rows == 0 || rows % of != 0 || raw.data.len() % rows != 0 {
                    return Err(format_error(format!(
                        "shape {:?} cannot be split into {of} blocks of rows",
                        raw.shape
                    )));
                }
                let row_bytes = raw.data.len() / rows;
                let block = rows / of * row_bytes;
                let range = part * block..(part + 1) * block;
                let mut shape = raw.shape.clone();
                shape[0] = rows / of;
                let data = match raw.data {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[range]),
                    Cow::Owned(v) => Cow::Owned(v[range].to_vec()),
                };
                Ok(Some(RawTensor {
                    dtype: raw.dtype,
                    shape,
                    data,
                }))
            }
        }
    }
}

/// A borrowed source is a source (a view over a checkpoint that outlives it).
impl<T: TensorSource + ?Sized> TensorSource for &T {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn keys(&self) -> Vec<String> {
        (**self).keys()
    }

    fn tensor(&self, key: &str) -> Result<Option<RawTensor<'_>>, WeightError> {
        (**self).tensor(key)
    }
}

/// How checkpoint keys relate to a module's field paths.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    /// Prefixes a checkpoint may put in front of every key (e.g. `text_model.` in SD 1.x text
    /// encoders saved by transformers 4). The first one that matches any module key is used.
    pub prefixes: Vec<String>,
    /// Checkpoint keys that carry no weights for us and are skipped silently (buffers such as
    /// `embeddings.position_ids`), matched after the prefix is removed.
    pub ignored: Vec<String>,
}

/// A problem with one key of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyProblem {
    Missing {
        key: String,
        expected: Vec<usize>,
    },
    Unexpected {
        key: String,
        shape: Vec<usize>,
    },
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    DType {
        key: String,
        found: String,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { key, expected } => {
                write!(f, "missing key {key} (expected shape {expected:?})")
            }
            Self::Unexpected { key, shape } => write!(f, "unexpected key {key} (shape {shape:?})"),
            Self::Shape {
                key,
                expected,
                found,
            } => {
                write!(f, "{key}: expected shape {expected:?}, found {found:?}")
            }
            Self::DType { key, found } => write!(f, "{key}: {found}"),
        }
    }
}

/// Errors of weight loading.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read {source_name}: {error}")]
    Io {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Format {
        source_name: String,
        message: String,
    },
    #[error("{source_name} does not match the model{}: {} problem(s):\n  {}\nCheck that the weights belong to this model's config.json (same architecture and sizes).",
        .model.as_deref().map(|m| format!(" {m}")).unwrap_or_default(),
        .problems.len(),
        .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Mismatch {
        source_name: String,
        model: Option<String>,
        problems: Vec<KeyProblem>,
    },
}

/// How a Burn parameter's layout relates to the PyTorch tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Same,
    /// Burn's `nn::Linear` stores `[d_input, d_output]`, PyTorch `[out, in]`.
    Transposed,
}

/// The one remap table: a Burn field name + the module type holding it -> the PyTorch name,
/// and for parameters how Burn's layout relates to PyTorch's. Every path component goes
/// through it; what it does not list keeps its name.
fn burn_name_to_torch<'a>(container: &str, field: &'a str) -> (Cow<'a, str>, Layout) {
    match (container, field) {
        ("Struct:Linear", "weight") => (Cow::Borrowed("weight"), Layout::Transposed),
        ("Struct:LayerNorm" | "Struct:GroupNorm", "gamma") => {
            (Cow::Borrowed("weight"), Layout::Same)
        }
        ("Struct:LayerNorm" | "Struct:GroupNorm", "beta") => (Cow::Borrowed("bias"), Layout::Same),
        // diffusers' FeedForward is `net = ModuleList([GEGLU, Dropout, Linear])`.
        ("Struct:FeedForward", "net_0") => (Cow::Borrowed("net.0"), Layout::Same),
        ("Struct:FeedForward", "net_2") => (Cow::Borrowed("net.2"), Layout::Same),
        _ => (Cow::Borrowed(field), Layout::Same),
    }
}

/// Key and layout of every float parameter of a module, in PyTorch terms, with Burn's shape
/// translated to PyTorch's (`[out, in]` for Linear). Used for structure checks and by the loader.
pub fn torch_keys<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Collect {
        path: Vec<String>,
        containers: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push(name.to_string());
            self.containers.push(container_type.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
            self.containers.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (key, layout) = param_key(&self.path, &self.containers);
            let mut shape = param.lazy_shape().dims::<D>().to_vec();
            if layout == Layout::Transposed {
                shape.reverse();
            }
            self.out.push((key, shape));
        }
    }
    let mut c = Collect {
        path: vec![],
        containers: vec![],
        out: vec![],
    };
    module.visit(&mut c);
    c.out
}

/// `path` ends with the parameter's field name; `containers[i]` is the type of the module that
/// holds field `path[i]` (what Burn's derive passes to `enter_module`).
fn param_key(path: &[String], containers: &[String]) -> (String, Layout) {
    let mut key = String::new();
    let mut layout = Layout::Same;
    for (field, container) in path.iter().zip(containers) {
        // An enum module is one of several forms of the same weights (a 1x1 conv or a Linear
        // `proj_in`): its variant name is not part of the checkpoint key.
        if container.starts_with("Enum:") {
            continue;
        }
        let (name, l) = burn_name_to_torch(container, field);
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&name);
        layout = l;
    }
    (key, layout)
}

/// Loads every float parameter of `module` from `source`.
///
/// The device's float dtype decides the dtype of the loaded tensors (f32, or f16 on a device
/// configured for it); stored f32 / f16 / bf16 are converted on the CPU one tensor at a time, so
/// peak host memory is one tensor beyond the (mapped) source.
pub fn load_module<M: Module>(
    module: M,
    source: &dyn TensorSource,
    keys: &KeyMap,
    device: &Device,
) -> Result<M, WeightError> {
    // On the CPU backend the device's memory is the host's: uploading in blocks would only
    // add a copy (the blocks are joined with `cat`) and twice the page faults.
    let block_bytes = match device.as_dispatch() {
        DispatchDevice::Flex(_) => usize::MAX,
        _ => UPLOAD_BLOCK_BYTES,
    };
    load_module_in_blocks(module, source, keys, device, block_bytes)
}

/// Tensors larger than this (on the device) are converted and uploaded in blocks of rows.
pub const UPLOAD_BLOCK_BYTES: usize = 16 << 20;

/// [`load_module`] with another upload block size (tests use tiny blocks).
pub fn load_module_in_blocks<M: Module>(
    module: M,
    source: &dyn TensorSource,
    keys: &KeyMap,
    device: &Device,
    block_bytes: usize,
) -> Result<M, WeightError> {
    let wanted = torch_keys(&module);
    let source_keys: BTreeSet<String> = source.keys().into_iter().collect();
    // Pick the prefix that makes the checkpoint's keys line up with the module's.
    let prefix = keys
        .prefixes
        .iter()
        .find(|p| {
            wanted
                .iter()
                .any(|(k, _)| source_keys.contains(&format!("{p}{k}")))
        })
        .cloned()
        .unwrap_or_default();

    let float_dtype = match device.settings().float_dtype {
        FloatDType::F16 => DType::F16,
        _ => DType::F32,
    };
    let mut loader = Loader {
        source,
        block_bytes: block_bytes.max(1),
        prefix: &prefix,
        device,
        float_dtype,
        path: vec![],
        containers: vec![],
        used: BTreeSet::new(),
        problems: vec![],
    };
    let module = module.map(&mut loader);
    let mut problems = loader.problems;
    let used = loader.used;

    for key in &source_keys {
        let bare = key.strip_prefix(prefix.as_str()).unwrap_or(key);
        if used.contains(key) || keys.ignored.iter().any(|i| i == bare) {
            continue;
        }
        let shape = source.tensor(key)?.map(|t| t.shape).unwrap_or_default();
        problems.push(KeyProblem::Unexpected {
            key: key.clone(),
            shape,
        });
    }
    if problems.is_empty() {
        Ok(module)
    } else {
        Err(WeightError::Mismatch {
            source_name: source.name().to_string(),
            model: None,
            problems,
        })
    }
}

struct Loader<'a> {
    source: &'a dyn TensorSource,
    /// Tensors above this many bytes on the device are uploaded in row blocks.
    block_bytes: usize,
    prefix: &'a str,
    device: &'a Device,
    float_dtype: DType,
    path: Vec<String>,
    containers: Vec<String>,
    used: BTreeSet<String>,
    problems: Vec<KeyProblem>,
}

/// Little-endian f16 bytes to f32: `half`'s slice conversion (F16C instructions where the CPU has
/// them, detected at run time), over several threads natively for large tensors.
fn f16_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    fn convert(bytes: &[u8], out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        // Little-endian hosts can view aligned bytes as f16 directly.
        match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(halves) if cfg!(target_endian = "little") => halves.convert_to_f32_slice(out),
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }
    let mut out = vec![0f32; bytes.len() / 2];
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 18; // values per task
        if out.len() > CHUNK {
            out.par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK * 2))
                .for_each(|(o, b)| convert(b, o));
            return out;
        }
    }
    convert(bytes, &mut out);
    out
}

/// `[rows, cols]` row-major -> `[cols, rows]` row-major, in blocks of output rows (in parallel
/// natively).
fn transpose_2d(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 16; // output rows per task: 16 input values read contiguously
    let mut out = vec![0f32; v.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    let fill = |(b, chunk): (usize, &mut [f32])| {
        let j0 = b * BLOCK;
        let n = chunk.len() / rows;
        for i in 0..rows {
            for (jj, &x) in v[i * cols + j0..i * cols + j0 + n].iter().enumerate() {
                chunk[jj * rows + i] = x;
            }
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(BLOCK * rows).enumerate().for_each(fill);
    }
    #[cfg(target_arch = "wasm32")]
    out.chunks_mut(BLOCK * rows).enumerate().for_each(fill);
    out
}

impl Loader<'_> {
    /// Converts `raw` to the device dtype and uploads it; tensors larger than
    /// `block_bytes` go up in blocks of rows joined on the device, so host memory holds one
    /// block's conversion at a time (the 49408 x 768 token embedding is 152 MB in f32; a
    /// browser's wasm heap never shrinks).
    fn upload<const D: usize>(&self, raw: &RawTensor<'_>) -> Result<Tensor<D>, String> {
        let convert = |part: &RawTensor<'_>| match self.float_dtype {
            DType::F16 => part
                .to_f16()
                .map(|v| TensorData::new(v, part.shape.clone())),
            _ => part
                .to_f32()
                .map(|v| TensorData::new(v, part.shape.clone())),
        };
        let element = if self.float_dtype == DType::F16 { 2 } else { 4 };
        let rows = raw.shape.first().copied().unwrap_or(1);
        let row_elements = raw.numel() / rows.max(1);
        let row_bytes_on_device = row_elements * element;
        // The weights themselves go to the device's persistent pool (CubeCL: exact-fit slices
        // outside the pools that activations' pages are carved from), so that the activations'
        // pages are sized to the activations alone and the weights reserve what they hold.
        let device = self.device;
        if rows < 2 || raw.numel().saturating_mul(element) <= self.block_bytes || row_elements == 0
        {
            return Ok(device.memory_persistent_allocations(convert(raw)?, |data| {
                Tensor::from_data(data, device)
            }));
        }
        let stored_row_bytes = raw.data.len() / rows;
        let rows_per_block = (self.block_bytes / row_bytes_on_device).max(1);
        let mut parts = Vec::with_capacity(rows.div_ceil(rows_per_block));
        for start in (0..rows).step_by(rows_per_block) {
            let end = (start + rows_per_block).min(rows);
            let mut shape = raw.shape.clone();
            shape[0] = end - start;
            let part = RawTensor {
                dtype: raw.dtype,
                shape,
                data: Cow::Borrowed(&raw.data[start * stored_row_bytes..end * stored_row_bytes]),
            };
            parts.push(Tensor::<D>::from_data(convert(&part)?, device));
        }
        // The blocks are temporaries (ordinary pools); only the joined tensor is persistent.
        Ok(device.memory_persistent_allocations(parts, |parts| Tensor::cat(parts, 0)))
    }

    fn load<const D: usize>(&mut self, expected: Vec<usize>) -> Option<Tensor<D>> {
        let (key, layout) = param_key(&self.path, &self.containers);
        let key = format!("{}{key}", self.prefix);
        let mut torch_shape = expected.clone();
        if layout == Layout::Transposed {
            torch_shape.reverse();
        }
        let raw = match self.source.tensor(&key) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                self.problems.push(KeyProblem::Missing {
                    key,
                    expected: torch_shape,
                });
                return None;
            }
            Err(e) => {
                self.problems.push(KeyProblem::DType {
                    key,
                    found: e.to_string(),
                });
                return None;
            }
        };
        self.used.insert(key.clone());
        if raw.shape != torch_shape {
            self.problems.push(KeyProblem::Shape {
                key,
                expected: torch_shape,
                found: raw.shape,
            });
            return None;
        }
        // Burn's `linear` reshapes its weight (`[in, out]` -> `[1, in, out]`) for batched
        // inputs, and the CPU backend's reshape of a transposed view copies it on every call:
        // there, transposed weights are laid out once, on the host, as they are converted.
        let host_transpose = layout == Layout::Transposed
            && D == 2
            && self.float_dtype == DType::F32
            && matches!(self.device.as_dispatch(), DispatchDevice::Flex(_));
        let uploaded = if host_transpose {
            let [rows, cols] = [raw.shape[0], raw.shape[1]];
            raw.to_f32().map(|v| {
                Tensor::from_data(
                    TensorData::new(transpose_2d(&v, rows, cols), [cols, rows]),
                    self.device,
                )
            })
        } else {
            self.upload::<D>(&raw)
        };
        let tensor = match uploaded {
            Ok(t) => t,
            Err(message) => {
                self.problems.push(KeyProblem::DType {
                    key,
                    found: message,
                });
                return None;
            }
        };
        Some(match layout {
            Layout::Same => tensor,
            Layout::Transposed if host_transpose => tensor,
            Layout::Transposed => tensor.transpose(),
        })
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let expected = param.lazy_shape().dims::<D>().to_vec();
        match self.load::<D>(expected) {
            Some(tensor) => Param::initialized(param.id, tensor),
            None => param,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(dtype: StoredDType, shape: Vec<usize>, data: Vec<u8>) -> RawTensor<'static> {
        RawTensor {
            dtype,
            shape,
            data: Cow::Owned(data),
        }
    }

    #[test]
    fn converts_every_float_dtype() {
        let values = [1.5f32, -2.25, 0.0, 65504.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            raw(StoredDType::F32, vec![4], f32_bytes).to_f32().unwrap(),
            values
        );
        assert_eq!(
            raw(StoredDType::F16, vec![2, 2], f16_bytes)
                .to_f32()
                .unwrap(),
            values
        );
        let bf = raw(StoredDType::BF16, vec![4], bf_bytes).to_f32().unwrap();
        assert_eq!(&bf[..3], &values[..3]);
        assert_eq!(bf[3], bf16::from_f32(65504.0).to_f32());
    }

    /// The threaded, vectorised f16 path equals the element-by-element definition, on aligned
    /// and misaligned bytes, across chunk boundaries, for every f16 bit pattern.
    #[test]
    fn f16_conversion_matches_the_definition() {
        let n = (1 << 18) * 3 + 77;
        let bytes: Vec<u8> = (0..n as u32)
            .flat_map(|i| ((i.wrapping_mul(40503)) as u16).to_le_bytes())
            .collect();
        // NaN payloads may differ between F16C and the software path: any NaN matches a NaN.
        let canon = |v: f32| if v.is_nan() { u32::MAX } else { v.to_bits() };
        let want: Vec<u32> = bytes
            .chunks_exact(2)
            .map(|c| canon(f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect();
        let got: Vec<u32> = f16_bytes_to_f32(&bytes).into_iter().map(canon).collect();
        assert_eq!(got, want);
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let got: Vec<u32> = f16_bytes_to_f32(&shifted[1..])
            .into_iter()
            .map(canon)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn transpose_2d_matches_the_definition() {
        for (rows, cols) in [(1, 1), (3, 5), (17, 33), (40, 16), (2, 0)] {
            let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose_2d(&v, rows, cols);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        t[j * rows + i],
                        v[i * cols + j],
                        "{rows}x{cols} at ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_wrong_lengths_and_int_dtypes() {
        let e = raw(StoredDType::F32, vec![3], vec![0; 8])
            .to_f32()
            .unwrap_err();
        assert!(e.contains("8 bytes"), "{e}");
        let e = raw(StoredDType::Other(StDtype::I64), vec![1], vec![0; 8])
            .to_f32()
            .unwrap_err();
        assert!(e.contains("not a float"), "{e}");
    }

    #[test]
    fn rejects_garbage_buffers_with_the_name() {
        let e = SafetensorsBuffer::new("weights.bin", vec![1u8, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("weights.bin"), "{e}");
    }

    #[test]
    fn remap_table() {
        let key = |path: &[&str], containers: &[&str]| {
            let p: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            let c: Vec<String> = containers.iter().map(|s| s.to_string()).collect();
            param_key(&p, &c)
        };
        assert_eq!(
            key(&["q_proj", "weight"], &["Struct:Attn", "Struct:Linear"]),
            ("q_proj.weight".into(), Layout::Transposed)
        );
        assert_eq!(
            key(&["norm", "gamma"], &["Struct:X", "Struct:GroupNorm"]),
            ("norm.weight".into(), Layout::Same)
        );
        assert_eq!(
            key(&["ln", "beta"], &["Struct:X", "Struct:LayerNorm"]),
            ("ln.bias".into(), Layout::Same)
        );
        assert_eq!(
            key(&["conv", "weight"], &["Struct:X", "Struct:Conv2d"]),
            ("conv.weight".into(), Layout::Same)
        );
        assert_eq!(
            key(
                &["ff", "net_2", "weight"],
                &["Struct:Block", "Struct:FeedForward", "Struct:Linear"]
            ),
            ("ff.net.2.weight".into(), Layout::Transposed)
        );
        assert_eq!(
            key(
                &["to_out", "0", "bias"],
                &["Struct:Attention", "Vec", "Struct:Linear"]
            ),
            ("to_out.0.bias".into(), Layout::Same)
        );
    }
}
