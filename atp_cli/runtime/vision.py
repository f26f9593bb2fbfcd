"""Owner of an mtmd (libmtmd) context: image -> projected visual embedding rows for the language model."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from llama_cpp import mtmd_cpp as mtmd
from PIL import Image

from atp_cli.errors import InputError, ModelError
from atp_cli.image_input import MAX_PIXELS
from atp_cli.runtime.log import raise_pending_interrupt
from atp_cli.runtime.mmproj_check import check_mmproj
from atp_cli.runtime.model import LlamaModel, check_gguf_file
from atp_cli.runtime.owner import Closeable


class ImageEncoder(Closeable):
    """Vision tower + projector from an mmproj GGUF, tied to the language model it feeds."""

    def __init__(self, mmproj: str | Path, model: LlamaModel, n_threads: int = 0, warmup: bool = False) -> None:
        self.path = Path(mmproj)
        check_gguf_file(self.path)
        self.info = check_mmproj(self.path, model.n_embd)  # before mtmd: its loader asserts instead of failing
        self.model = model
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.warmup = warmup
        if n_threads:
            params.n_threads = n_threads
        ptr = mtmd.mtmd_init_from_file(str(self.path).encode(), model.ptr, params)
        self.ptr = ptr
        raise_pending_interrupt()  # close() frees ptr
        if not ptr:
            raise ModelError(f"llama.cpp could not load the vision projector {self.path} for {model.path} "
                             "(wrong file, or its output size does not match the language model)")
        self.ptr = ptr
        self.marker = mtmd.mtmd_default_marker()

    def n_tokens(self) -> int:
        """Visual tokens per image (the mmproj's (image_size / patch_size)^2)."""
        return self.info.n_tokens

    def encode(self, image: Image.Image) -> np.ndarray:
        """(n_tokens, n_embd) float32 rows in raster order."""
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        h, w = rgb.shape[:2]
        if h * w > MAX_PIXELS or min(h, w) < 1:
            raise InputError(f"image of {w}x{h} pixels is outside what atp accepts (1 .. {MAX_PIXELS} pixels)")
        bitmap = mtmd.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text(self.marker, len(self.marker), False, True)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd.mtmd_tokenize(self.ptr, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise ModelError("mtmd could not prepare the image")
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                    rc = mtmd.mtmd_encode_chunk(self.ptr, chunk)
                    raise_pending_interrupt()
                    if rc != 0:
                        raise ModelError("mtmd failed to encode the image")
                    out = mtmd.mtmd_get_output_embd(self.ptr)
                    return np.ctypeslib.as_array(out, shape=(n, self.model.n_embd)).copy()
            raise ModelError("mtmd produced no image chunk")
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            mtmd.mtmd_free(self.ptr)
            self.ptr = None
