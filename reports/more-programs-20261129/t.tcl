set d [dict create]
for {set i 0} {$i < 200000} {incr i} { dict lappend d [expr {$i % 3000}] "v$i" }
set n 0
dict for {k v} $d { incr n [llength $v] }
puts "[dict size $d] $n [string length [join [lsort [dict keys $d]] ,]]"
