//! The message type shared by the network side and the script side.
//!
//! Scripts never see tungstenite's `Message`; sockets never see Rhai values. A `Payload` is
//! what crosses between them: the text or bytes of one WebSocket message, shared without
//! copying (`Bytes`), so a broadcast to many connections costs one allocation.

use bytes::Bytes;

/// The data of one WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A text frame; always valid UTF-8.
    Text(Text),
    /// A binary frame.
    Binary(Bytes),
}

/// UTF-8 text held in `Bytes`, so it can be handed to the socket without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// Wraps tungstenite's text, which it has checked is UTF-8 (no second check).
    pub(crate) fn from_checked(text: tokio_tungstenite::tungstenite::Utf8Bytes) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or guarantees UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The text as tungstenite's, without checking it again (every message sent goes here).
    pub(crate) fn into_utf8_bytes(self) -> tokio_tungstenite::tungstenite::Utf8Bytes {
        // SAFETY: every constructor checks or guarantees UTF-8.
        unsafe { tokio_tungstenite::tungstenite::Utf8Bytes::from_bytes_unchecked(self.0) }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl Payload {
    pub fn text(s: impl Into<Text>) -> Self {
        Self::Text(s.into())
    }

    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self::Binary(b.into())
    }

    /// Size in bytes of the message data.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.0.len(),
            Self::Binary(b) => b.len(),
        }
    }
}
