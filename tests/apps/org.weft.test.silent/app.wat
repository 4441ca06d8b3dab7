;; org.weft.test.silent: never signals READY; drains IPC until the session ends (tests only).
(module
  (import "weft:app/ipc@0.1.0" "recv" (func $recv (param i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "run")
    (loop $next
      (global.set $heap (i32.const 1024))
      (call $recv (i32.const 8))
      (br_if $next (i32.load8_u (i32.const 8)))))
)
