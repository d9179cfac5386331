"""The Docker images that run the app, named in CreateTask's prerequisites and the app definition.

Overridable by environment so a node operator who pushes the images under another name can say so.
"""

import os

from fractal_app import __version__
from fractal_app.protocol.constants import DOCKER_CPU_ENV_ID, DOCKER_GPU_ENV_ID


def image_for_env(env_id: str) -> dict[str, str]:
    """The DockerPrerequisites object ({"image", "tag"}) of the image for a Golem environment."""
    if env_id == DOCKER_GPU_ENV_ID:
        image = os.environ.get("FRACTAL_APP_GPU_IMAGE", "fractal-app-gpu")
    elif env_id == DOCKER_CPU_ENV_ID:
        image = os.environ.get("FRACTAL_APP_CPU_IMAGE", "fractal-app-cpu")
    else:
        raise ValueError(
            f"unknown environment {env_id!r}: use {DOCKER_CPU_ENV_ID!r} or {DOCKER_GPU_ENV_ID!r}"
        )
    return {"image": image, "tag": os.environ.get("FRACTAL_APP_IMAGE_TAG", __version__)}
