;; org.weft.test.hog: grows its memory on request (tests only). Every message grows the linear
;; memory by 16 MiB and writes every new byte (so the pages are resident), then replies
;; "grown"; once memory.grow fails (the guest's own cap) it replies "full".
(module
  (import "weft:app/notify@0.1.0" "ready" (func $ready))
  (import "weft:app/ipc@0.1.0" "send" (func $send (param i32 i32 i32)))
  (import "weft:app/ipc@0.1.0" "recv" (func $recv (param i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 64) "grown")
  (data (i32.const 80) "full")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "run")
    (local $old i32)
    call $ready
    (block $closed
      (loop $next
        (global.set $heap (i32.const 1024))
        (call $recv (i32.const 8))
        (br_if $closed (i32.eqz (i32.load8_u (i32.const 8))))
        (local.set $old (memory.grow (i32.const 256)))
        (if (i32.eq (local.get $old) (i32.const -1))
          (then
            (call $send (i32.const 80) (i32.const 4) (i32.const 24))
            (br $next)))
        (memory.fill (i32.mul (local.get $old) (i32.const 65536)) (i32.const 170) (i32.const 16777216))
        (call $send (i32.const 64) (i32.const 5) (i32.const 24))
        (br $next))))
)
