"""Small fully convolutional Keras models for the tests of ``distconv apply``: a U-Net of two
pooling levels (total stride 4) with skip connections, 2-D or 3-D, any channels in and out."""

from __future__ import annotations

import os


def unet(space: int = 2, channels_in: int = 1, channels_out: int = 2, seed: int = 0):
    """A Conv/MaxPool/UpSampling/Concatenate U-Net taking images of any size (a multiple of 4)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers

    conv = {2: layers.Conv2D, 3: layers.Conv3D}[space]
    pool = {2: layers.MaxPooling2D, 3: layers.MaxPooling3D}[space]
    up = {2: layers.UpSampling2D, 3: layers.UpSampling3D}[space]
    keras.utils.set_random_seed(seed)
    image = keras.Input((None,) * space + (channels_in,))
    level1 = conv(8, 3, padding="same", activation="relu")(image)
    level2 = conv(12, 3, padding="same", activation="relu")(pool(2)(level1))
    bottom = conv(12, 3, padding="same", activation="relu")(pool(2)(level2))
    merged2 = layers.Concatenate()([up(2)(bottom), level2])
    back2 = conv(8, 3, padding="same", activation="relu")(merged2)
    merged1 = layers.Concatenate()([up(2)(back2), level1])
    out = conv(channels_out, 1, padding="same")(merged1)
    return keras.Model(image, out)


def whole_image(model, image):
    """The model's own prediction on one whole image (space axes, channels last)."""
    return model.predict(image[None], verbose=0)[0]
