"""Push an export folder to the Hugging Face Hub: create the repo, upload the folder in one commit.

The token comes from where huggingface_hub looks (HF_TOKEN, then `hf auth login`'s token file)
and is never printed. `api` lets tests pass a recording fake instead of `HfApi`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

HUB_URL = "https://huggingface.co"


class HubError(RuntimeError):
    """A push that could not be done, with the reason; nothing was uploaded when it is raised."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str | None
    files: list[str]
    dry_run: bool
    url: str
    commit_url: str | None = field(default=None)


def upload_files(folder: str | Path) -> list[str]:
    """The files `upload_folder` sends: everything under `folder` except hidden paths."""
    folder = Path(folder)
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    return sorted(p.as_posix() for p in files if not any(s.startswith(".") for s in p.parts))


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _describe(error: Exception, repo_id: str, token: str | None) -> str:
    """One clear line for an HTTP, auth or network failure; never contains the token."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, OfflineModeIsEnabled):
        text = "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); unset it to push"
    elif status in (401, 403):
        text = (
            f"not authorised to write to {repo_id} (HTTP {status}): use a token with write "
            "access to that namespace (HF_TOKEN or `hf auth login`)"
        )
    elif status == 404:
        text = f"{repo_id} or its namespace was not found, or the token cannot see it (HTTP 404)"
    elif isinstance(error, HfHubHTTPError):
        text = f"the Hub answered HTTP {status}: {str(error).splitlines()[0] if str(error) else ''}"
    else:
        text = f"could not reach the Hugging Face Hub ({type(error).__name__}: {error})"
    return text.replace(token, "***") if token else text


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
    api=None,
) -> PushResult:
    """Create `repo_id` (if needed) and upload `folder` as one commit; dry_run only lists files."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"--push-to-hub: {repo_id!r} is not a valid repo id (OWNER/NAME)") from error
    if "/" not in repo_id:
        raise HubError(f"--push-to-hub: {repo_id!r} needs the owner: OWNER/NAME")
    files = upload_files(folder)
    if not files:
        raise HubError(f"{folder} has no files to upload")
    url = f"{HUB_URL}/{repo_id}" + (f"/tree/{revision}" if revision else "")
    if dry_run:
        return PushResult(repo_id, revision, files, True, url)
    token = None
    if api is None:
        from huggingface_hub import HfApi, get_token

        if _offline():
            raise HubError(
                "cannot push: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); "
                "unset it to push, nothing was uploaded"
            )
        token = get_token()
        if not token:
            raise HubError(
                "cannot push: no Hugging Face token; set HF_TOKEN or run `hf auth login` "
                "(nothing was uploaded)"
            )
        api = HfApi(token=token)
    stage = "creating the repo"
    try:
        # private=None leaves a new repo at the namespace's default visibility
        api.create_repo(repo_id, private=private or None, repo_type="model", exist_ok=True)
        if revision:
            stage = f"creating the branch {revision!r}"
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        stage = "uploading"
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload rasft-mlx export",
        )
    except Exception as error:  # HTTP, auth and network errors come in many types
        raise HubError(
            f"push to {repo_id} failed while {stage}: {_describe(error, repo_id, token)}; "
            "no files were committed"
        ) from error
    commit_url = getattr(commit, "commit_url", None) or (
        commit if isinstance(commit, str) else None
    )
    return PushResult(repo_id, revision, files, False, url, commit_url)
