"""Is a Hugging Face model id usable from here? Checked before a run starts, so a detached run never fails
later for a model it could not have had."""

from __future__ import annotations

import os


class HubError(Exception):
    """The model id is neither in the local Hugging Face cache nor reachable on the hub; the message says why."""


def check_available(model_id: str, timeout: float = 15.0) -> None:
    """Pass if `model_id` has a cached snapshot (its config.json) or the hub answers for it; else HubError."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str) and os.path.isfile(cached):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise HubError(f"model {model_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                       "download it first (or set model.path to a local model directory)")
    try:
        model_info(model_id, timeout=timeout)
    except RepositoryNotFoundError:
        raise HubError(f"model {model_id!r} does not exist on the Hugging Face hub (or needs a login: "
                       "`hf auth login`)") from None
    except HfHubHTTPError as e:
        raise HubError(f"the Hugging Face hub refused model {model_id!r}: {e}") from None
    except Exception as e:  # no network, DNS, TLS, timeouts: the hub cannot be reached
        raise HubError(f"cannot reach the Hugging Face hub for model {model_id!r} and it is not in the local "
                       f"cache ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
                       "download it where the hub is reachable, or set model.path to a local model directory") from None
