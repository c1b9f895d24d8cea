//! The few raw proxy-wasm calls the SDK only offers in a panicking or allocating form.
//! Reading a header map here is one host call into one buffer, parsed in place with every
//! length bounds-checked: a malformed buffer yields no headers, never a trap.
#![allow(unsafe_code)]

use proxy_wasm::types::MapType;

extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// The whole serialized header map, or `None` if the host refused.
pub fn header_map(map: MapType) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated through our `proxy_on_memory_allocate`
    // (a boxed slice of exactly `size` bytes) and its size; we take ownership once.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    if status != 0 {
        return None;
    }
    if data.is_null() || size == 0 {
        return Some(Vec::new());
    }
    // SAFETY: see above; capacity equals length for the allocator's boxed slices.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}
