//! One AEAD pass over one record, on an OpenSSL cipher context keyed once.
//!
//! The record layer calls OpenSSL's EVP functions here directly, not
//! through the `openssl` crate's safe wrappers: those ask the context for
//! its IV length before every nonce and for its mode and block size before
//! every update. On OpenSSL 3.0 each such question is an `OSSL_PARAM`
//! round trip into the provider (name lookups by `strcmp`), and a record
//! made three of them on top of the two OpenSSL makes itself (the nonce's
//! own IV-length check and the tag). The crypto is OpenSSL's all the same.
//!
//! Contract of both functions: `ctx` holds an AEAD cipher (AES-GCM or
//! ChaCha20-Poly1305) and its key, set up by the caller with the openssl
//! crate in the direction the function uses (encrypt for [`seal`],
//! decrypt for [`open`]), from a provider (OpenSSL 3: the tag goes
//! through `EVP_CIPHER_CTX_get_params`/`set_params`); `nonce` has the
//! cipher's IV length, which for every TLS suite's cipher is its default
//! of 12 bytes (the record layer never changes it); the tag is
//! [`Aead::TAG_LEN`] bytes.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::ptr;

use foreign_types_shared::ForeignTypeRef;
use openssl::cipher_ctx::CipherCtxRef;
use openssl::error::ErrorStack;
use openssl_sys as ffi;

use crate::suite::Aead;

const TAG_LEN: usize = Aead::TAG_LEN;

/// Encrypt `inout` in place under `nonce`, authenticating `aad` too, and
/// write the tag.
pub(crate) fn seal(
    ctx: &mut CipherCtxRef,
    way: NonceWay,
    nonce: &[u8; Aead::NONCE_LEN],
    aad: &[u8],
    inout: &mut [u8],
    tag: &mut [u8; TAG_LEN],
) -> Result<(), ErrorStack> {
    let ctx = ctx.as_ptr();
    match way {
        NonceWay::GcmFixedIv => set_params(ctx, &[iv_param(nonce), end()])?,
        NonceWay::Reinit => set_nonce(ctx, nonce)?,
    }
    add_aad(ctx, aad)?;
    update_in_place(ctx, inout)?;
    finish(ctx, ffi::EVP_EncryptFinal_ex)?;
    get_tag(ctx, tag.as_mut_ptr())
}

/// Decrypt `inout` in place under `nonce`, authenticating `aad` too, and
/// check `tag`. `Ok(false)` means the record is not authentic: `inout`
/// then holds unauthenticated bytes the caller must discard, and the
/// failed check's entry is cleared from OpenSSL's error queue.
pub(crate) fn open(
    ctx: &mut CipherCtxRef,
    way: NonceWay,
    nonce: &[u8; Aead::NONCE_LEN],
    aad: &[u8],
    inout: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<bool, ErrorStack> {
    let ctx = ctx.as_ptr();
    // OpenSSL only reads the expected tag through this pointer.
    let expected = tag.as_ptr().cast_mut();
    match way {
        // Nonce and expected tag in one parameter call (GCM takes the tag
        // before the data as well as after).
        NonceWay::GcmFixedIv => set_params(ctx, &[iv_param(nonce), tag_of(expected), end()])?,
        NonceWay::Reinit => set_nonce(ctx, nonce)?,
    }
    add_aad(ctx, aad)?;
    update_in_place(ctx, inout)?;
    if way == NonceWay::Reinit {
        set_params(ctx, &[tag_of(expected), end()])?;
    }
    if finish(ctx, ffi::EVP_DecryptFinal_ex).is_err() {
        // A failed tag check leaves an entry on the thread's error queue;
        // drain it so it is not blamed on a later call.
        let _ = ErrorStack::get();
        return Ok(false);
    }
    Ok(true)
}

/// How a record's nonce reaches the cipher context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceWay {
    /// AES-GCM: the provider's `tlsivfixed` parameter with the length -1
    /// (what `EVP_CTRL_GCM_SET_IV_FIXED` with -1 sends): the whole 12-byte
    /// IV is copied in, exactly what `EVP_CipherInit_ex` with only an IV
    /// does to a GCM context, without the init's IV-length query (a
    /// `get_params` round trip of some ten `strcmp`s on OpenSSL 3.0).
    GcmFixedIv,
    /// Any other cipher (ChaCha20-Poly1305): `EVP_CipherInit_ex` with only
    /// the IV.
    Reinit,
}

impl NonceWay {
    /// The way for `aead`.
    pub(crate) fn for_aead(aead: Aead) -> Self {
        match aead {
            Aead::Aes128Gcm | Aead::Aes256Gcm => Self::GcmFixedIv,
            Aead::Chacha20Poly1305 => Self::Reinit,
        }
    }
}

/// The GCM "fixed IV" parameter carrying the whole nonce (length -1, see
/// [`NonceWay::GcmFixedIv`]).
fn iv_param(nonce: &[u8; Aead::NONCE_LEN]) -> ffi::OSSL_PARAM {
    // SAFETY: the key is a NUL-terminated literal; the provider reads the
    // context's IV length (12 bytes, NONCE_LEN) from the pointer, which
    // the caller's nonce outlives for the parameter call it is used in.
    unsafe {
        ffi::OSSL_PARAM_construct_octet_string(
            c"tlsivfixed".as_ptr(),
            nonce.as_ptr().cast_mut().cast(),
            usize::MAX,
        )
    }
}

/// The tag parameter over `tag` (TAG_LEN bytes).
fn tag_of(tag: *mut u8) -> ffi::OSSL_PARAM {
    // SAFETY: the key is a NUL-terminated literal; tag points at TAG_LEN
    // bytes that outlive the parameter call it is used in.
    unsafe { ffi::OSSL_PARAM_construct_octet_string(c"tag".as_ptr(), tag.cast(), TAG_LEN) }
}

/// The end marker of a parameter array.
fn end() -> ffi::OSSL_PARAM {
    // SAFETY: constructing the end marker reads nothing.
    unsafe { ffi::OSSL_PARAM_construct_end() }
}

/// One `EVP_CIPHER_CTX_set_params` call with `params`, an array that ends
/// with [`end`].
fn set_params(ctx: *mut ffi::EVP_CIPHER_CTX, params: &[ffi::OSSL_PARAM]) -> Result<(), ErrorStack> {
    assert!(
        params.last().is_some_and(|p| p.key.is_null()),
        "a parameter array ends with its end marker"
    );
    // SAFETY: ctx is live and keyed; params is end-terminated (checked
    // above) and its entries point at buffers the caller keeps alive for
    // this call.
    cvt(unsafe { EVP_CIPHER_CTX_set_params(ctx, params.as_ptr()) })
}

/// Set the next record's nonce; cipher, key and direction stay.
fn set_nonce(
    ctx: *mut ffi::EVP_CIPHER_CTX,
    nonce: &[u8; Aead::NONCE_LEN],
) -> Result<(), ErrorStack> {
    // SAFETY: ctx is live and keyed; with no cipher, engine or key given
    // only the IV is set, and OpenSSL reads exactly the context's IV
    // length from nonce: the default 12 bytes (NONCE_LEN) of AES-GCM and
    // ChaCha20-Poly1305, which nothing changes. enc = -1 keeps the
    // direction the context was keyed for.
    cvt(unsafe {
        ffi::EVP_CipherInit_ex(
            ctx,
            ptr::null(),
            ptr::null_mut(),
            ptr::null(),
            nonce.as_ptr(),
            -1,
        )
    })
}

/// Authenticate `aad` (not encrypted).
fn add_aad(ctx: *mut ffi::EVP_CIPHER_CTX, aad: &[u8]) -> Result<(), ErrorStack> {
    let len = len_of(aad)?;
    let mut written: c_int = 0;
    // SAFETY: ctx is live and has its nonce; aad is readable for len
    // bytes; a NULL output makes the input AAD, so nothing is written.
    cvt(unsafe { ffi::EVP_CipherUpdate(ctx, ptr::null_mut(), &mut written, aad.as_ptr(), len) })
}

/// Encrypt or decrypt `data` in place.
fn update_in_place(ctx: *mut ffi::EVP_CIPHER_CTX, data: &mut [u8]) -> Result<(), ErrorStack> {
    let len = len_of(data)?;
    let mut written: c_int = 0;
    let p = data.as_mut_ptr();
    // SAFETY: ctx is live and has its nonce; AES-GCM and ChaCha20-Poly1305
    // are stream modes that may work in place (input == output) and write
    // exactly len bytes, all within data.
    cvt(unsafe { ffi::EVP_CipherUpdate(ctx, p, &mut written, p, len) })
}

unsafe extern "C" {
    fn EVP_CIPHER_CTX_get_params(
        ctx: *mut ffi::EVP_CIPHER_CTX,
        params: *mut ffi::OSSL_PARAM,
    ) -> c_int;
    fn EVP_CIPHER_CTX_set_params(
        ctx: *mut ffi::EVP_CIPHER_CTX,
        params: *const ffi::OSSL_PARAM,
    ) -> c_int;
}

/// Read the tag of the record just sealed, straight through the
/// provider's parameter call (`EVP_CIPHER_CTX_ctrl` builds the same
/// parameter and calls it, after its own translation of the control code).
fn get_tag(ctx: *mut ffi::EVP_CIPHER_CTX, tag: *mut u8) -> Result<(), ErrorStack> {
    let mut params = [tag_of(tag), end()];
    // SAFETY: ctx is live and keyed; params is a terminated array whose
    // one entry describes TAG_LEN writable bytes.
    cvt(unsafe { EVP_CIPHER_CTX_get_params(ctx, params.as_mut_ptr()) })
}

/// A direction's `EVP_*Final_ex`.
type FinalFn = unsafe extern "C" fn(*mut ffi::EVP_CIPHER_CTX, *mut u8, *mut c_int) -> c_int;

/// Finish the record: the tag is computed (sealing, `EVP_EncryptFinal_ex`)
/// or checked (opening, `EVP_DecryptFinal_ex`).
fn finish(ctx: *mut ffi::EVP_CIPHER_CTX, final_fn: FinalFn) -> Result<(), ErrorStack> {
    // An AEAD stream cipher writes nothing here; the room is a margin.
    let mut spare = [0u8; 32];
    let mut written: c_int = 0;
    // SAFETY: ctx is live and was given the whole record; spare has room
    // for more than one cipher block, which is all a final call may write.
    cvt(unsafe { final_fn(ctx, spare.as_mut_ptr(), &mut written) })
}

fn len_of(data: &[u8]) -> Result<c_int, ErrorStack> {
    c_int::try_from(data.len()).map_err(|_| ErrorStack::get())
}

fn cvt(ret: c_int) -> Result<(), ErrorStack> {
    if ret <= 0 {
        Err(ErrorStack::get())
    } else {
        Ok(())
    }
}
