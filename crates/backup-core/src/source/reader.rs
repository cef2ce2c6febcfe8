//! `ReaderSource`: any async reader as an item (library users, tests, stdin).

use async_trait::async_trait;

use super::{ByteStream, Source};
use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};

/// Wraps an already-open stream. It cannot fail after end-of-stream.
pub struct ReaderSource {
    name: String,
    kind: ItemKind,
    format: String,
    reader: Option<ByteStream>,
}

impl ReaderSource {
    /// A `stream` item named `name` in format `raw`.
    pub fn new(name: impl Into<String>, reader: ByteStream) -> Self {
        ReaderSource {
            name: name.into(),
            kind: ItemKind::Stream,
            format: "raw".into(),
            reader: Some(reader),
        }
    }

    /// Overrides kind and format (a tar piped in from elsewhere, say).
    pub fn with_kind(mut self, kind: ItemKind, format: impl Into<String>) -> Self {
        self.kind = kind;
        self.format = format.into();
        self
    }
}

#[async_trait]
impl Source for ReaderSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ItemKind {
        self.kind
    }
    fn format(&self) -> &str {
        &self.format
    }
    async fn open(&mut self) -> Result<ByteStream> {
        self.reader
            .take()
            .ok_or_else(|| Error::Usage(format!("source {} opened twice", self.name)))
    }
    async fn finish(&mut self) -> Result<Facts> {
        Ok(Facts::new())
    }
}
