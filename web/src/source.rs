//! A model in the browser: the files of a diffusers folder as `Blob`s (IndexedDB hands out
//! disk-backed blobs, so nothing is in memory until read), read synchronously with
//! `FileReaderSync` inside the worker. Weights go through [`SafetensorsReader`], one tensor at
//! a time: the wasm heap holds one tensor (plus its f32 copy), never a whole file.

use std::cell::Cell;
use std::collections::BTreeMap;

use nullpaint::manifest::weight_file_candidates;
use nullpaint::pipeline::{ModelSource, PipelineError};
use nullpaint::weights::{ByteRange, SafetensorsReader, TensorSource};
use wasm_bindgen::JsCast;
use web_sys::{Blob, FileReaderSync};

/// Counts bytes read and reports them to the page.
pub struct ReadProgress {
    pub total: f64,
    pub done: Cell<f64>,
    pub callback: js_sys::Function,
}

impl ReadProgress {
    fn add(&self, bytes: usize, file: &str) {
        self.done.set(self.done.get() + bytes as f64);
        // A failing progress callback must not fail the load.
        let _ = self.callback.call3(
            &wasm_bindgen::JsValue::NULL,
            &self.done.get().into(),
            &self.total.into(),
            &file.into(),
        );
    }
}

/// The files of one model, by path inside the diffusers folder (`unet/config.json`, ...).
pub struct BlobSource {
    name: String,
    files: BTreeMap<String, Blob>,
    reader: FileReaderSync,
    progress: ReadProgress,
}

impl BlobSource {
    pub fn new(
        name: String,
        files: BTreeMap<String, Blob>,
        callback: js_sys::Function,
    ) -> Result<Self, String> {
        let reader = FileReaderSync::new().map_err(|e| {
            format!(
                "FileReaderSync is unavailable ({}); models load inside a Web Worker only",
                js_error(&e)
            )
        })?;
        let total = files.values().map(Blob::size).sum();
        Ok(Self {
            name,
            files,
            reader,
            progress: ReadProgress {
                total,
                done: Cell::new(0.0),
                callback,
            },
        })
    }

    fn read_range(
        &self,
        path: &str,
        blob: &Blob,
        offset: f64,
        len: f64,
    ) -> Result<Vec<u8>, String> {
        let part = blob
            .slice_with_f64_and_f64(offset, offset + len)
            .map_err(|e| js_error(&e))?;
        let buffer = self
            .reader
            .read_as_array_buffer(&part)
            .map_err(|e| format!("reading {path} from browser storage: {}", js_error(&e)))?;
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        self.progress.add(bytes.len(), path);
        Ok(bytes)
    }
}

/// A JS exception as text.
pub fn js_error(value: &wasm_bindgen::JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

impl ModelSource for BlobSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PipelineError> {
        let Some(blob) = self.files.get(path) else {
            return Ok(None);
        };
        self.read_range(path, blob, 0.0, blob.size())
            .map(Some)
            .map_err(PipelineError::Source)
    }

    fn weights(&self, component: &str) -> Result<Box<dyn TensorSource + '_>, PipelineError> {
        let candidates = weight_file_candidates(component);
        if let Some((path, blob)) = candidates
            .iter()
            .find_map(|c| self.files.get(c).map(|b| (c.clone(), b.clone())))
        {
            return self.tensors_of(path, blob);
        }
        // Sharded (older hub folders): `<name>.safetensors.index.json` and the shards it names.
        if let Some(index) = candidates
            .iter()
            .map(|c| format!("{c}.index.json"))
            .find(|i| self.files.contains_key(i))
        {
            let bytes = self.read(&index)?.unwrap_or_default();
            let name = format!("{}/{index}", self.name);
            let dir = index.rsplit_once('/').map_or("", |(d, _)| d);
            let mut parts = vec![];
            for shard in nullpaint::weights::shard_files(&name, &bytes)? {
                let path = if dir.is_empty() {
                    shard.clone()
                } else {
                    format!("{dir}/{shard}")
                };
                if !self.files.contains_key(&path) {
                    return Err(PipelineError::Source(format!(
                        "{name} names the shard {shard}, which is not stored; download or import the model again"
                    )));
                }
                parts.push(self.tensors(&path)?);
            }
            return Ok(Box::new(nullpaint::weights::ShardedSource::new(
                name, parts,
            )?));
        }
        Err(PipelineError::Source(format!(
            "{}: no weights for {component} (looked for {}); download the model again",
            self.name,
            candidates.join(", ")
        )))
    }
}

impl BlobSource {
    /// The only file, when the model is a single `.safetensors` checkpoint (original layout).
    pub fn single_file(&self) -> Option<&str> {
        match self.files.keys().collect::<Vec<_>>()[..] {
            [path] if path.ends_with(".safetensors") && !path.contains('/') => Some(path),
            _ => None,
        }
    }

    /// The tensors of one stored safetensors file, read by byte range.
    pub fn tensors(&self, path: &str) -> Result<Box<dyn TensorSource + '_>, PipelineError> {
        let blob = self
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| PipelineError::Source(format!("{}: no file {path}", self.name)))?;
        self.tensors_of(path.to_string(), blob)
    }

    fn tensors_of(
        &self,
        path: String,
        blob: Blob,
    ) -> Result<Box<dyn TensorSource + '_>, PipelineError> {
        let name = format!("{}/{path}", self.name);
        let range = BlobRange {
            source: self,
            path,
            blob,
        };
        Ok(Box::new(SafetensorsReader::new(name, range)?))
    }
}

/// One stored file, read by byte range.
struct BlobRange<'a> {
    source: &'a BlobSource,
    path: String,
    blob: Blob,
}

impl ByteRange for BlobRange<'_> {
    fn size(&self) -> u64 {
        self.blob.size() as u64
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        self.source
            .read_range(&self.path, &self.blob, offset as f64, len as f64)
    }
}
