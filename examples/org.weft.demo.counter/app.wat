;; org.weft.demo.counter: a core module that `wasm-tools component new` turns into a
;; component of world weft:app/ipc-app. It blocks in ipc.recv (no polling) and answers
;; every command with JSON: increment | decrement | reset | get -> {"count":N};
;; anything else -> {"error":"unknown command"}. Surrounding whitespace is ignored.
(module
  (import "weft:app/notify@0.1.0" "ready" (func $ready))
  ;; send(payload) -> result<_, string>: string as (ptr, len), result written at a return pointer
  (import "weft:app/ipc@0.1.0" "send" (func $send (param i32 i32 i32)))
  ;; recv() -> option<string>: at the return pointer, u8 tag @0, ptr @4, len @8
  (import "weft:app/ipc@0.1.0" "recv" (func $recv (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $count (mut i32) (i32.const 0))

  (data (i32.const 64) "increment")
  (data (i32.const 80) "decrement")
  (data (i32.const 96) "reset")
  (data (i32.const 112) "get")
  (data (i32.const 128) "{\22count\22:")
  (data (i32.const 160) "{\22error\22:\22unknown command\22}")

  ;; The host allocates incoming strings here (canonical ABI realloc); reset after each message.
  (func $realloc (export "cabi_realloc")
        (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $new_size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end)
                                                              (i32.mul (memory.size) (i32.const 65536)))
                                                     (i32.const 16))
                                          (i32.const 1)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old_size)
      (then (memory.copy (local.get $p) (local.get $old) (local.get $old_size))))
    (local.get $p))

  (func $equals (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $differ
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $alen)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                               (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; Writes {"count":N} at 1024 and returns its length.
  (func $format_count (result i32)
    (local $out i32) (local $value i64) (local $digits i32) (local $tmp i32)
    (memory.copy (i32.const 1024) (i32.const 128) (i32.const 9))
    (local.set $out (i32.const 1033))
    (local.set $value (i64.extend_i32_s (global.get $count)))
    (if (i64.lt_s (local.get $value) (i64.const 0))
      (then
        (i32.store8 (local.get $out) (i32.const 45))
        (local.set $out (i32.add (local.get $out) (i32.const 1)))
        (local.set $value (i64.sub (i64.const 0) (local.get $value)))))
    ;; digits are produced backwards into 2048.. and then copied in order
    (local.set $tmp (i32.const 2048))
    (loop $digit
      (i32.store8 (local.get $tmp)
                  (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $value) (i64.const 10)))))
      (local.set $tmp (i32.add (local.get $tmp) (i32.const 1)))
      (local.set $value (i64.div_u (local.get $value) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $value) (i64.const 0))))
    (loop $copy
      (local.set $tmp (i32.sub (local.get $tmp) (i32.const 1)))
      (i32.store8 (local.get $out) (i32.load8_u (local.get $tmp)))
      (local.set $out (i32.add (local.get $out) (i32.const 1)))
      (br_if $copy (i32.gt_u (local.get $tmp) (i32.const 2048))))
    (i32.store8 (local.get $out) (i32.const 125))
    (i32.sub (i32.add (local.get $out) (i32.const 1)) (i32.const 1024)))

  (func (export "run")
    (local $ptr i32) (local $len i32)
    call $ready
    (block $closed
      (loop $next
        (global.set $heap (i32.const 4096))
        (call $recv (i32.const 8))
        (br_if $closed (i32.eqz (i32.load8_u (i32.const 8))))
        (local.set $ptr (i32.load (i32.const 12)))
        (local.set $len (i32.load (i32.const 16)))
        ;; trim ASCII whitespace and control characters on both ends
        (block $front (loop $trim
          (br_if $front (i32.eqz (local.get $len)))
          (br_if $front (i32.gt_u (i32.load8_u (local.get $ptr)) (i32.const 32)))
          (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
          (local.set $len (i32.sub (local.get $len) (i32.const 1)))
          (br $trim)))
        (block $back (loop $trim
          (br_if $back (i32.eqz (local.get $len)))
          (br_if $back (i32.gt_u (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1)))
                                 (i32.const 32)))
          (local.set $len (i32.sub (local.get $len) (i32.const 1)))
          (br $trim)))
        (block $reply
          (if (call $equals (local.get $ptr) (local.get $len) (i32.const 64) (i32.const 9))
            (then (global.set $count (i32.add (global.get $count) (i32.const 1))) (br $reply)))
          (if (call $equals (local.get $ptr) (local.get $len) (i32.const 80) (i32.const 9))
            (then (global.set $count (i32.sub (global.get $count) (i32.const 1))) (br $reply)))
          (if (call $equals (local.get $ptr) (local.get $len) (i32.const 96) (i32.const 5))
            (then (global.set $count (i32.const 0)) (br $reply)))
          (br_if $reply (call $equals (local.get $ptr) (local.get $len) (i32.const 112) (i32.const 3)))
          (call $send (i32.const 160) (i32.const 27) (i32.const 24))
          (br $next))
        (call $send (i32.const 1024) (call $format_count) (i32.const 24))
        (br $next))))
)
