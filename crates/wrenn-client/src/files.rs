//! Files inside a capsule (contract §8): streamed upload and download, list, mkdir, remove.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStream};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method};
use wrenn_types::files::{EntryResponse, FileEntry, ListRequest, ListResponse, PathRequest};

use crate::{segment, Client, ClientError};

/// A file's bytes as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

impl Client {
    /// Writes a stream of bytes to `path` in the capsule (creating parent directories,
    /// replacing a file), without holding it in memory and without a size limit.
    pub async fn upload<S>(&self, id: &str, path: &str, data: S) -> Result<(), ClientError>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        let file = Part::stream(Body::wrap_stream(data))
            .file_name("upload.bin")
            .mime_str("application/octet-stream")
            .map_err(ClientError::Http)?;
        let form = Form::new().text("path", path.to_owned()).part("file", file);
        Self::send(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/stream/write", segment(id)),
            )
            .multipart(form),
        )
        .await?;
        Ok(())
    }

    /// Writes `data` to `path` in the capsule (at most 100 MiB; use [`Client::upload`] beyond).
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let file = Part::stream(Body::from(data.into()))
            .file_name("upload")
            .mime_str("application/octet-stream")
            .map_err(ClientError::Http)?;
        let form = Form::new().text("path", path.to_owned()).part("file", file);
        Self::send(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/write", segment(id)),
            )
            .multipart(form),
        )
        .await?;
        Ok(())
    }

    /// Streams the file at `path` out of the capsule.
    pub async fn download(&self, id: &str, path: &str) -> Result<ByteStream, ClientError> {
        let resp = Self::send(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/stream/read", segment(id)),
            )
            .json(&PathRequest { path: path.into() }),
        )
        .await?;
        Ok(Box::pin(
            resp.bytes_stream().map(|r| r.map_err(ClientError::Http)),
        ))
    }

    /// Reads the whole file at `path`.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Bytes, ClientError> {
        let resp = Self::send(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/read", segment(id)),
            )
            .json(&PathRequest { path: path.into() }),
        )
        .await?;
        resp.bytes().await.map_err(ClientError::Http)
    }

    /// The entries under directory `path`, `depth` levels deep (0 and 1: its own entries).
    pub async fn list_dir(
        &self,
        id: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<FileEntry>, ClientError> {
        let body = ListRequest {
            path: path.into(),
            depth,
        };
        let list: ListResponse = Self::json(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/list", segment(id)),
            )
            .json(&body),
        )
        .await?;
        Ok(list.entries)
    }

    /// Creates directory `path` with its parents; `conflict` when it exists.
    pub async fn make_dir(&self, id: &str, path: &str) -> Result<FileEntry, ClientError> {
        let made: EntryResponse = Self::json(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/mkdir", segment(id)),
            )
            .json(&PathRequest { path: path.into() }),
        )
        .await?;
        Ok(made.entry)
    }

    /// Removes a file or a directory tree.
    pub async fn remove(&self, id: &str, path: &str) -> Result<(), ClientError> {
        Self::send(
            self.request(
                Method::POST,
                &format!("/capsules/{}/files/remove", segment(id)),
            )
            .json(&PathRequest { path: path.into() }),
        )
        .await?;
        Ok(())
    }
}
