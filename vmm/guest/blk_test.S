# The real-mode virtio-blk test guest (GNU as, 16-bit; built by vmm/build.rs).
#
# Drives the virtio-blk device at 0xd0000 (virtio-mmio, version 2) with one
# queue in low memory, polling the used ring (interrupts stay off):
#   1. reset, negotiate VERSION_1 and FLUSH (both required), set up queue 0;
#   2. write the first N 64 KiB blocks of the disk, N = capacity / 64 KiB
#      (at most MAX_BUFS): every 512-byte sector holds its own LBA in its
#      first 4 bytes (little endian) and FILL bytes after it;
#   3. FLUSH;
#   4. read every block back and compare it with what was written.
# Then it prints "blk-test: OK <N in hex>" or "blk-test: FAIL <code>" on
# COM1 and writes 0 (success) or the code to the exit port 0x501.
# Failure codes: M magic/version, D not a block device, F features,
# Q queue setup, I an I/O request's status, C data compared different.
#
# Every instruction is emulated here (about 2 µs each), so the buffer is
# filled once and only the 128 LBA words are patched per request; the
# comparison is one `repe cmpsl` per block.

    .set MMIO_SEG, 0xd000       # virtio-mmio registers at 0xd0000
    .set WBUF_SEG, 0x1000       # written / expected data at 0x10000
    .set RBUF_SEG, 0x2000       # read-back data at 0x20000
    .set DESC, 0x1000           # descriptor table (4 entries)
    .set AVAIL, 0x1100          # driver ring
    .set USED, 0x1200           # device ring
    .set HDR, 0x1300            # virtio_blk_req header
    .set STATUS, 0x1310         # its status byte
    .set QSIZE, 4
    .set MAX_BUFS, 1024         # 64 MiB at most
    .set FILL, 0xa55a
    .set COM1, 0x3f8
    .set EXIT_PORT, 0x501
    .set T_IN, 0
    .set T_OUT, 1
    .set T_FLUSH, 4

    .code16
    .text
    .globl _start
_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $WBUF_SEG, %ax
    mov %ax, %fs
    mov $MMIO_SEG, %ax
    mov %ax, %es

    # --- identify and negotiate
    mov $'M', %al
    cmpl $0x74726976, %es:0x000
    jne fail
    cmpl $2, %es:0x004
    jne fail
    mov $'D', %al
    cmpl $2, %es:0x008
    jne fail
    movl $0, %es:0x070                  # reset
    movl $1, %es:0x070                  # ACKNOWLEDGE
    movl $3, %es:0x070                  # DRIVER
    mov $'F', %al
    movl $1, %es:0x014
    testl $1, %es:0x010                 # VERSION_1 (bit 32)
    jz fail
    movl $0, %es:0x014
    testl $(1 << 9), %es:0x010          # VIRTIO_BLK_F_FLUSH
    jz fail
    movl $1, %es:0x024
    movl $1, %es:0x020
    movl $0, %es:0x024
    movl $(1 << 9), %es:0x020
    movl $0xb, %es:0x070                # FEATURES_OK
    testl $8, %es:0x070
    jz fail

    # --- queue 0: QSIZE entries at DESC/AVAIL/USED
    mov $'Q', %al
    movl $0, %es:0x030
    cmpl $QSIZE, %es:0x034
    jb fail
    movl $QSIZE, %es:0x038
    movl $DESC, %es:0x080
    movl $0, %es:0x084
    movl $AVAIL, %es:0x090
    movl $0, %es:0x094
    movl $USED, %es:0x0a0
    movl $0, %es:0x0a4
    movw $1, AVAIL                      # VIRTQ_AVAIL_F_NO_INTERRUPT
    movw $0, AVAIL + 2
    movw $0, USED + 2
    # Fixed descriptors: 0 header -> 1 data -> 2 status.
    movl $HDR, DESC + 0
    movl $0, DESC + 4
    movl $16, DESC + 8
    movw $1, DESC + 12                  # NEXT
    movw $1, DESC + 14
    movl $0, DESC + 16 + 4
    movl $0x10000, DESC + 16 + 8
    movw $2, DESC + 16 + 14
    movl $STATUS, DESC + 32
    movl $0, DESC + 32 + 4
    movl $1, DESC + 32 + 8
    movw $2, DESC + 32 + 12             # WRITE
    movl $1, %es:0x044                  # QueueReady
    movl $0xf, %es:0x070                # DRIVER_OK
    testl $4, %es:0x070
    jz fail

    # --- how many 64 KiB blocks
    mov %es:0x100, %eax                 # capacity in sectors, low half
    mov %es:0x104, %ecx
    shr $7, %eax
    test %ecx, %ecx
    jnz 1f
    cmp $MAX_BUFS, %eax
    jbe 2f
1:  mov $MAX_BUFS, %eax
2:  mov %eax, nbufs

    # --- the pattern, once
    push %es
    mov $WBUF_SEG, %ax
    mov %ax, %es
    xor %di, %di
    mov $0x8000, %cx
    mov $FILL, %ax
    rep stosw
    pop %es

    # --- write every block
    xor %ebx, %ebx                      # LBA
    mov nbufs, %ebp
    test %ebp, %ebp
    jz 4f
3:  call tag
    mov $T_OUT, %edx
    call request
    add $128, %ebx
    dec %ebp
    jnz 3b
4:
    # --- flush
    mov $T_FLUSH, %edx
    call request

    # --- read back and compare
    xor %ebx, %ebx
    mov nbufs, %ebp
    test %ebp, %ebp
    jz 6f
5:  call tag
    mov $T_IN, %edx
    call request
    push %ds
    push %es
    mov $WBUF_SEG, %ax
    mov %ax, %ds
    mov $RBUF_SEG, %ax
    mov %ax, %es
    xor %si, %si
    xor %di, %di
    mov $0x4000, %cx
    repe cmpsl
    pop %es
    pop %ds
    mov $'C', %al
    jne fail
    add $128, %ebx
    dec %ebp
    jnz 5b
6:
    mov $ok_msg, %si
    call puts
    mov nbufs, %eax
    call puthex
    mov $crlf, %si
    call puts
    xor %al, %al
    jmp stop

# Writes the LBAs of the block at LBA %ebx into the write buffer.
tag:
    mov %ebx, %eax
    xor %di, %di
    mov $128, %cx
1:  mov %eax, %fs:(%di)
    inc %eax
    add $512, %di
    loop 1b
    ret

# One request of type %edx at LBA %ebx (data in the write buffer for
# T_OUT, into the read buffer for T_IN, none for T_FLUSH); waits for it and
# fails unless its status is OK.
request:
    mov %edx, HDR
    movl $0, HDR + 4
    mov %ebx, HDR + 8
    movl $0, HDR + 12
    movb $0xff, STATUS
    movw $1, DESC + 14                  # header -> data
    movl $0x10000, DESC + 16            # T_OUT: device reads the write buffer
    movw $1, DESC + 16 + 12             # NEXT
    cmp $T_IN, %edx
    jne 1f
    movl $0x20000, DESC + 16            # T_IN: device writes the read buffer
    movw $3, DESC + 16 + 12             # NEXT | WRITE
1:  cmp $T_FLUSH, %edx
    jne 2f
    movw $2, DESC + 14                  # header -> status
2:  mov AVAIL + 2, %ax
    mov %ax, %si
    and $(QSIZE - 1), %si
    shl $1, %si
    movw $0, AVAIL + 4(%si)             # head descriptor 0
    inc %ax
    mov %ax, AVAIL + 2
    movl $0, %es:0x050                  # notify queue 0 (32-bit: ioeventfd)
3:  cmp USED + 2, %ax
    jne 3b
    cmpb $0, STATUS
    jne 4f
    ret
4:  mov $'I', %al
    jmp fail

# Prints the NUL-terminated string at %si on COM1.
puts:
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

# Prints %eax as 8 hex digits on COM1.
puthex:
    mov $COM1, %dx
    mov $8, %cx
1:  rol $4, %eax
    push %ax
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $7, %al
2:  out %al, %dx
    pop %ax
    loop 1b
    ret

# Reports failure code %al.
fail:
    mov %al, %bl
    mov $fail_msg, %si
    call puts
    mov %bl, %al
    out %al, %dx
    mov $crlf, %si
    call puts
    mov %bl, %al
stop:
    mov $EXIT_PORT, %dx
    out %al, %dx
1:  hlt
    jmp 1b

ok_msg:   .asciz "blk-test: OK "
fail_msg: .asciz "blk-test: FAIL "
crlf:     .asciz "\r\n"
    .balign 4
nbufs:    .long 0
