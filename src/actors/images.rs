//! ImagesActor: the HTTP layer's way to the OCI image store (pre-pull, list, remove).
//! The store does its own work off the actor (pulls are tasks, disk work is on
//! blocking threads), so the actor only hands requests over.

use actix::prelude::*;

use crate::images::{ImageInfo, ImageList, ImageStore, RemoveError};
use crate::model::ImageRef;

/// Why an image request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// There is no image store (its directory was not usable at start-up).
    #[error("the image store is not available on this server")]
    Unavailable,
    /// The removal was refused.
    #[error(transparent)]
    Remove(#[from] RemoveError),
}

/// The actor; `None` when the store could not be opened.
pub struct ImagesActor {
    store: Option<ImageStore>,
}

impl ImagesActor {
    /// Serve `store`.
    pub fn new(store: Option<ImageStore>) -> Self {
        Self { store }
    }

    fn store(&self) -> Result<ImageStore, ImagesError> {
        self.store.clone().ok_or(ImagesError::Unavailable)
    }
}

impl Actor for ImagesActor {
    type Context = Context<Self>;
}

/// `POST /v1/images`: start (or join) a pull of the reference, refreshing a stored tag.
#[derive(Message)]
#[rtype(result = "Result<(), ImagesError>")]
pub struct PullImage(pub ImageRef);

/// `GET /v1/images`.
#[derive(Message)]
#[rtype(result = "Result<ImageList, ImagesError>")]
pub struct ListImages;

/// `DELETE /v1/images/{digest}`: remove an image no workload holds.
#[derive(Message)]
#[rtype(result = "Result<ImageInfo, ImagesError>")]
pub struct RemoveImage(pub String);

impl Handler<PullImage> for ImagesActor {
    type Result = Result<(), ImagesError>;

    fn handle(&mut self, msg: PullImage, _: &mut Self::Context) -> Self::Result {
        self.store()?.pull_in_background(&msg.0);
        Ok(())
    }
}

impl Handler<ListImages> for ImagesActor {
    type Result = Result<ImageList, ImagesError>;

    fn handle(&mut self, _: ListImages, _: &mut Self::Context) -> Self::Result {
        Ok(self.store()?.list())
    }
}

impl Handler<RemoveImage> for ImagesActor {
    type Result = ResponseFuture<Result<ImageInfo, ImagesError>>;

    fn handle(&mut self, msg: RemoveImage, _: &mut Self::Context) -> Self::Result {
        let store = self.store();
        Box::pin(async move { Ok(store?.remove(&msg.0).await?) })
    }
}
