"""Encryption of task arguments at accept time (Fernet, from the ``cryptography`` extra)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

INSTALL_HINT = "argument encryption needs the 'cryptography' package: pip install 'fastapi-taskflow-rs[encryption]'"


class ArgumentDecryptionError(RuntimeError):
    """A task's arguments cannot be decrypted with the configured key(s)."""


class ArgumentCipher:
    """Encrypts ``(args, kwargs)`` with the first key; decrypts with any of them.

    Several keys allow rotation: put the new key first and keep the old ones until
    the tasks encrypted with them have run.
    """

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        key_list = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        if not key_list:
            raise ValueError("encrypt_args_key needs at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in key_list])

    def encrypt(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(pickle.dumps((args, kwargs)))

    def decrypt(self, token: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        from cryptography.fernet import InvalidToken

        try:
            plain = self._fernet.decrypt(token)
        except InvalidToken:
            raise ArgumentDecryptionError(
                "the task's arguments cannot be decrypted with the configured encrypt_args_key "
                "(was the key rotated? list the old key after the new one to keep old tasks readable)"
            ) from None
        args, kwargs = pickle.loads(plain)
        return args, kwargs
