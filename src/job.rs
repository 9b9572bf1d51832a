//! A video job's request, as accepted: the one shape it keeps from the supervisor's store to
//! the worker's metadata.
//!
//! The wire request (`pb::video::v1::VideoRequest`) carries raw sizes, optional seeds and
//! inline media; once the supervisor has validated it, defaults are filled in, inline media
//! saved to files and the sizes checked against the pipeline. What is left is this value: the
//! supervisor persists it inside its job record, hands it to the worker, and the worker
//! records it in `metadata.json`. Its serialized form keeps the flat field names records
//! were written with (`prompt`, `width`, ..., `placement`), so stored jobs stay readable.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pb::video::v1::VideoRequest;
use crate::pipeline::{Placements, Shape};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    /// The soundtrack, a file on the supervisor's host.
    pub audio: Option<PathBuf>,
    /// A reference image, a file on the supervisor's host.
    pub reference_image: Option<PathBuf>,
    /// Sizes, with the pipeline's defaults filled in and its rules checked.
    #[serde(flatten)]
    pub shape: Shape,
    pub seed: u64,
    /// The pipeline's name in the supervisor's catalog.
    pub pipeline: String,
    /// Per-component placement overrides (staged pipelines).
    #[serde(default)]
    pub placement: Placements,
}

/// The sizes a wire request asks for (0: the pipeline's default), read the same way by the
/// supervisor that validates them and the worker that is handed them.
impl From<&VideoRequest> for Shape {
    fn from(request: &VideoRequest) -> Shape {
        Shape {
            width: request.width,
            height: request.height,
            frames: request.frames,
            fps: request.fps,
            steps: request.steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_is_stored_flat() {
        let request = Request {
            prompt: "a fox".into(),
            shape: Shape {
                width: 256,
                height: 192,
                frames: 17,
                fps: 24,
                steps: 8,
            },
            seed: 7,
            pipeline: "tiny".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["width"], 256);
        assert_eq!(json["steps"], 8);
        assert!(json.get("shape").is_none());
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("placement");
        let back: Request = serde_json::from_value(old).unwrap();
        assert_eq!(
            back, request,
            "a record from before placements existed still loads"
        );
    }
}
